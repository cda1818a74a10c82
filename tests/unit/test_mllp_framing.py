"""Tests for the MLLP frame decoder (connectors.mllp.framing)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mllp.framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameDecoder,
    FrameError,
    FrameEvent,
    encode_frame,
)

VT, FS, CR, LF = 0x0B, 0x1C, 0x0D, 0x0A
MISSING_CR = FrameError("missing_cr", 0)

PAYLOADS = [
    b"MSH|^~\\&|APP|FAC|||20240101||ADT^A01|1|P|2.5\rPID|1||123\r",
    b"",
    b"MSH|^~\\&|APP|FAC|||20240101||ORU^R01|2|P|2.5\rOBX|1|NM|x||42\r",
]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def run(chunks: Iterable[bytes], max_frame_bytes: int = 10 * 1024 * 1024) -> list[FrameEvent]:
    """Feed all chunks, then close, returning every event in order."""
    decoder = FrameDecoder(max_frame_bytes)
    events: list[FrameEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def frames(*payloads: bytes) -> list[FrameEvent]:
    return [Frame(p) for p in payloads]


def normalise_oversize(events: list[FrameEvent], max_frame_bytes: int) -> list[FrameEvent]:
    """The oversize size depends on TCP chunking by design; check its bound, then blank it."""
    out: list[FrameEvent] = []
    for event in events:
        if isinstance(event, FrameError) and event.code == "oversize":
            assert event.size > max_frame_bytes
            event = FrameError("oversize", -1)
        out.append(event)
    return out


# --- basics ------------------------------------------------------------------------------------


def test_constants_and_encode_frame() -> None:
    assert (START_BLOCK, END_BLOCK, CARRIAGE_RETURN) == (b"\x0b", b"\x1c", b"\x0d")
    assert encode_frame(b"abc") == b"\x0babc\x1c\x0d"
    assert encode_frame(b"") == b"\x0b\x1c\x0d"


def test_single_frame() -> None:
    assert run([encode_frame(b"hello")]) == frames(b"hello")


def test_empty_payload_frame() -> None:
    assert run([b"\x0b\x1c\x0d"]) == [Frame(b"")]


def test_concatenated_frames_in_one_read() -> None:
    assert run([STREAM]) == frames(*PAYLOADS)


def test_feed_returns_events_incrementally() -> None:
    decoder = FrameDecoder()
    first, second = encode_frame(b"one"), encode_frame(b"two")
    assert decoder.feed(first[:3]) == []
    assert decoder.feed(first[3:] + second[:2]) == [Frame(b"one")]
    assert decoder.feed(second[2:]) == [Frame(b"two")]
    assert decoder.feed(b"") == []
    assert decoder.close() == []


def test_frame_payload_is_bytes_not_a_view() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x0bab")
    [event] = decoder.feed(b"c\x1c\x0d")
    assert isinstance(event, Frame)
    assert type(event.payload) is bytes
    assert event.payload == b"abc"


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_split_at_every_position(cut: int) -> None:
    assert run([STREAM[:cut], STREAM[cut:]]) == frames(*PAYLOADS)


def test_split_at_every_pair_of_positions() -> None:
    for a in range(len(STREAM) + 1):
        for b in range(a, len(STREAM) + 1):
            assert run(split(STREAM, [a, b])) == frames(*PAYLOADS), (a, b)


def test_byte_by_byte() -> None:
    assert run(STREAM[i : i + 1] for i in range(len(STREAM))) == frames(*PAYLOADS)


# --- garbage and whitespace --------------------------------------------------------------------


def test_garbage_before_frame() -> None:
    assert run([b"junk" + encode_frame(b"a")]) == [FrameError("garbage", 4), Frame(b"a")]


def test_garbage_between_frames() -> None:
    data = encode_frame(b"a") + b"xyz" + encode_frame(b"b")
    assert run([data]) == [Frame(b"a"), FrameError("garbage", 3), Frame(b"b")]


def test_garbage_after_last_frame_reported_at_close() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"a") + b"tail") == [Frame(b"a")]
    assert decoder.buffered == 0
    assert decoder.close() == [FrameError("garbage", 4)]


def test_garbage_run_across_chunks_is_one_event() -> None:
    chunks = [b"ab", b"cd", b"e" + encode_frame(b"x")]
    assert run(chunks) == [FrameError("garbage", 5), Frame(b"x")]


def test_stray_end_block_outside_frame_is_garbage() -> None:
    assert run([b"\x1c\x0d" + encode_frame(b"a")]) == [FrameError("garbage", 1), Frame(b"a")]


@pytest.mark.parametrize("ws", [b"\r", b"\n", b"\r\n", b"\n\n\r\n"])
def test_crlf_between_frames_is_ignored(ws: bytes) -> None:
    data = ws + encode_frame(b"a") + ws + encode_frame(b"b") + ws
    assert run([data]) == frames(b"a", b"b")


def test_crlf_inside_garbage_is_not_counted() -> None:
    data = encode_frame(b"a") + b"ab\r\ncd" + encode_frame(b"b")
    assert run([data]) == [Frame(b"a"), FrameError("garbage", 4), Frame(b"b")]


def test_garbage_only_stream() -> None:
    assert run([b"no frames here"]) == [FrameError("garbage", 14)]


# --- missing CR --------------------------------------------------------------------------------


def test_missing_cr_then_next_frame() -> None:
    data = b"\x0ba\x1c" + encode_frame(b"b")
    assert run([data]) == [Frame(b"a"), MISSING_CR, Frame(b"b")]


def test_missing_cr_followed_by_other_byte() -> None:
    data = b"\x0ba\x1cZ" + encode_frame(b"b")
    assert run([data]) == [Frame(b"a"), MISSING_CR, FrameError("garbage", 1), Frame(b"b")]


def test_end_block_followed_by_lf_is_missing_cr_and_lf_ignored() -> None:
    assert run([b"\x0ba\x1c\n" + encode_frame(b"b")]) == [Frame(b"a"), MISSING_CR, Frame(b"b")]


def test_end_block_at_end_of_chunk_delivers_at_once_and_swallows_the_cr() -> None:
    # A sender that never sends the CR waits for our ACK: the frame must not wait for the next byte.
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0babc\x1c") == [Frame(b"abc")]
    assert decoder.buffered == 0
    assert decoder.feed(b"\x0d") == []
    assert decoder.close() == []


def test_end_block_at_end_of_chunk_then_start_block() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0babc\x1c") == [Frame(b"abc")]
    assert decoder.feed(encode_frame(b"next")) == [MISSING_CR, Frame(b"next")]


def test_end_block_at_end_of_chunk_of_continued_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bab") == []
    assert decoder.feed(b"c\x1c") == [Frame(b"abc")]
    assert decoder.feed(b"\x0d\x0bz") == []


def test_end_block_then_close_reports_missing_cr() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0babc\x1c") == [Frame(b"abc")]
    assert decoder.close() == [MISSING_CR]


def test_empty_frame_missing_cr() -> None:
    assert run([b"\x0b\x1c\x0b\x1c\x0d"]) == [Frame(b""), MISSING_CR, Frame(b"")]


# --- unterminated ------------------------------------------------------------------------------


def test_unterminated_then_good_frame() -> None:
    data = b"\x0bpartial" + encode_frame(b"good")
    assert run([data]) == [FrameError("unterminated", 7), Frame(b"good")]


def test_unterminated_across_chunks() -> None:
    chunks = [b"\x0bpar", b"tial", b"\x0bgood\x1c\x0d"]
    assert run(chunks) == [FrameError("unterminated", 7), Frame(b"good")]


def test_repeated_start_blocks() -> None:
    assert run([b"\x0b\x0b\x0ba\x1c\x0d"]) == [
        FrameError("unterminated", 0),
        FrameError("unterminated", 0),
        Frame(b"a"),
    ]


def test_close_with_partial_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"a") + b"\x0bhalf a mess") == [Frame(b"a")]
    assert decoder.buffered == 11
    assert decoder.close() == [FrameError("unterminated", 11)]
    assert decoder.buffered == 0


def test_close_with_lone_start_block() -> None:
    assert run([b"\x0b"]) == [FrameError("unterminated", 0)]


def test_close_on_fresh_decoder() -> None:
    assert FrameDecoder().close() == []


def test_close_resets_decoder_for_reuse() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"garbage\x0bpartial")
    assert decoder.close() == [FrameError("unterminated", 7)]
    assert decoder.feed(encode_frame(b"fresh")) == [Frame(b"fresh")]
    assert decoder.close() == []


# --- oversize ----------------------------------------------------------------------------------


def test_payload_exactly_at_limit_is_accepted() -> None:
    assert run([encode_frame(b"x" * 10)], max_frame_bytes=10) == [Frame(b"x" * 10)]


def test_payload_exactly_at_limit_accepted_when_chunked() -> None:
    data = encode_frame(b"x" * 10)
    for cut in range(len(data) + 1):
        assert run([data[:cut], data[cut:]], max_frame_bytes=10) == [Frame(b"x" * 10)]


def test_oversize_in_one_chunk_then_resync() -> None:
    data = encode_frame(b"x" * 11) + encode_frame(b"ok")
    assert run([data], max_frame_bytes=10) == [FrameError("oversize", 11), Frame(b"ok")]


def test_oversize_byte_by_byte_emits_exactly_one_event_as_soon_as_crossed() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    events: list[FrameEvent] = []
    assert decoder.feed(b"\x0b") == []
    for i in range(10):
        assert decoder.feed(b"x") == [], i
    assert decoder.feed(b"x") == [FrameError("oversize", 11)]
    for _ in range(100):
        events += decoder.feed(b"x")
        assert decoder.buffered == 0
    events += decoder.feed(b"\x1c\x0d")  # end of the oversized frame: swallowed silently
    events += decoder.feed(encode_frame(b"ok"))
    events += decoder.close()
    assert events == [Frame(b"ok")]


def test_oversize_skipped_bytes_are_not_garbage() -> None:
    data = encode_frame(b"x" * 20) + b"\r\n" + encode_frame(b"ok")
    events = run([data[:5], data[5:]], max_frame_bytes=10)
    assert normalise_oversize(events, 10) == [FrameError("oversize", -1), Frame(b"ok")]


def test_oversize_resyncs_on_start_block_inside_frame() -> None:
    # 0x0B before any 0x1C: the oversize event wins (the limit was crossed first), no unterminated.
    data = b"\x0b" + b"x" * 15 + encode_frame(b"ok")
    assert run([data], max_frame_bytes=10) == [FrameError("oversize", 15), Frame(b"ok")]
    events = run([data[:4], data[4:]], max_frame_bytes=10)
    assert events == [FrameError("oversize", 15), Frame(b"ok")]


def test_oversize_without_end_then_close() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(b"\x0b" + b"x" * 50) == [FrameError("oversize", 50)]
    assert decoder.close() == []


def test_oversize_crossed_across_chunks_reports_size_so_far() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(b"\x0b" + b"x" * 8) == []
    assert decoder.feed(b"x" * 5) == [FrameError("oversize", 13)]
    assert decoder.buffered == 0


def test_several_oversize_frames_each_reported_once() -> None:
    big = encode_frame(b"x" * 30)
    data = big + encode_frame(b"a") + big + big + encode_frame(b"b")
    for size in (1, 7, 64, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        events = normalise_oversize(run(chunks, max_frame_bytes=10), 10)
        oversize = FrameError("oversize", -1)
        assert events == [oversize, Frame(b"a"), oversize, oversize, Frame(b"b")], size


def test_invalid_max_frame_bytes() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
    with pytest.raises(ValueError):
        FrameDecoder(-5)


# --- memory bound and performance shape --------------------------------------------------------


def test_memory_bound_under_endless_garbage() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    chunk = bytes(range(32, 127)) * 700  # no 0x0B
    for _ in range(200):
        assert decoder.feed(chunk) == []
        assert decoder.buffered == 0
    assert decoder.close() == [FrameError("garbage", len(chunk) * 200)]


def test_memory_bound_under_endless_oversize_frame() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    assert decoder.feed(b"\x0b") == []
    chunk = b"y" * 65536
    events: list[FrameEvent] = []
    for _ in range(200):
        events += decoder.feed(chunk)
        assert decoder.buffered <= 1024
    assert events == [FrameError("oversize", 65536)]
    assert decoder.buffered == 0


def test_partial_frame_buffers_at_most_the_limit() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    decoder.feed(b"\x0b")
    for _ in range(100):
        decoder.feed(b"z" * 10)
    assert decoder.buffered == 1000
    assert decoder.feed(b"z") == [FrameError("oversize", 1001)]
    assert decoder.buffered == 0


def test_large_frame_in_small_chunks_is_linear() -> None:
    # 4 MiB in 64-byte chunks: a decoder rescanning its buffer on every feed would take minutes.
    payload = bytes(range(32, 96)) * (4 * 1024 * 1024 // 64)
    data = encode_frame(payload)
    decoder = FrameDecoder()
    events: list[FrameEvent] = []
    for i in range(0, len(data), 64):
        events += decoder.feed(data[i : i + 64])
    assert events == [Frame(payload)]


def test_many_start_blocks_without_end_block_is_linear() -> None:
    # A naive "find 0x1C after each 0x0B" would rescan the whole chunk for each 0x0B.
    data = b"\x0b" * 300_000
    decoder = FrameDecoder()
    events = decoder.feed(data)
    assert len(events) == 300_000 - 1
    assert set(events) == {FrameError("unterminated", 0)}
    assert decoder.close() == [FrameError("unterminated", 0)]


def test_errors_never_carry_bytes() -> None:
    secret = b"PID|1||1234567890^^^HOP||DUPONT^JEAN"
    events = run([secret + b"\x0b" + secret + b"\x0b" + secret * 10], max_frame_bytes=64)
    assert events
    for event in events:
        assert isinstance(event, FrameError)
        assert "DUPONT" not in repr(event)
        assert set(type(event).__slots__) == {"code", "size"}


# --- reference model and properties ------------------------------------------------------------


def reference_decode(data: bytes, max_frame_bytes: int) -> list[FrameEvent]:
    """Obviously-correct byte-at-a-time model of the documented behaviour (oversize size blanked)."""
    events: list[FrameEvent] = []
    state, buf, garbage = "idle", bytearray(), 0
    for byte in data:
        if state == "await_cr":
            events.append(Frame(bytes(buf)))
            buf.clear()
            state = "idle"
            if byte == CR:
                continue
            events.append(MISSING_CR)
        if state == "skip":
            if byte != VT:
                continue
            state = "idle"
        if state == "idle":
            if byte == VT:
                if garbage:
                    events.append(FrameError("garbage", garbage))
                    garbage = 0
                state = "frame"
            elif byte not in (CR, LF):
                garbage += 1
            continue
        # state == "frame"
        if byte == VT:
            events.append(FrameError("unterminated", len(buf)))
            buf.clear()
        elif byte == FS:
            state = "await_cr"
        else:
            buf.append(byte)
            if len(buf) > max_frame_bytes:
                events.append(FrameError("oversize", -1))
                buf.clear()
                state = "skip"
    if state == "frame":
        events.append(FrameError("unterminated", len(buf)))
    elif state == "await_cr":
        events += [Frame(bytes(buf)), MISSING_CR]
    if garbage:
        events.append(FrameError("garbage", garbage))
    return events


# Streams rich in the bytes that matter, so the interesting paths are actually exercised.
special_bytes = st.lists(st.sampled_from([VT, FS, CR, LF, ord("a"), ord("b"), 0x00, 0xE9]), max_size=300)
streams = st.one_of(special_bytes.map(bytes), st.binary(max_size=300))
cut_points = st.lists(st.integers(min_value=0, max_value=300), max_size=12)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, cuts=cut_points, max_frame_bytes=st.integers(min_value=1, max_value=40))
def test_matches_reference_model_for_any_chunking(data: bytes, cuts: list[int], max_frame_bytes: int) -> None:
    cuts = [min(c, len(data)) for c in cuts]
    expected = reference_decode(data, max_frame_bytes)
    assert normalise_oversize(run([data], max_frame_bytes), max_frame_bytes) == expected
    events = run(split(data, cuts), max_frame_bytes)
    assert normalise_oversize(events, max_frame_bytes) == expected


@settings(max_examples=300)
@given(chunks=st.lists(streams, max_size=20), max_frame_bytes=st.integers(min_value=1, max_value=64))
def test_arbitrary_chunks_never_raise_and_memory_stays_bounded(
    chunks: list[bytes], max_frame_bytes: int
) -> None:
    decoder = FrameDecoder(max_frame_bytes)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            assert isinstance(event, Frame | FrameError)
            if isinstance(event, Frame):
                assert len(event.payload) <= max_frame_bytes
            else:
                assert event.code in {"oversize", "garbage", "unterminated", "missing_cr"}
                assert event.size >= 0
        assert 0 <= decoder.buffered <= max_frame_bytes
    decoder.close()
    assert decoder.buffered == 0


clean_payloads = st.lists(
    st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")), max_size=10
)


@settings(max_examples=300)
@given(payloads=clean_payloads, cuts=st.lists(st.integers(min_value=0, max_value=2500), max_size=20))
def test_encoded_payloads_round_trip_under_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    chunks = split(stream, [min(c, len(stream)) for c in cuts])
    assert run(chunks) == [Frame(p) for p in payloads]
