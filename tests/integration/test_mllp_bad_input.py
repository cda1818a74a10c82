"""Bad input gets a clear answer, the line stays usable, nothing is half-written (real socket and broker)."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from connectors.mllp.framing import encode_frame
from connectors.mllp.service import MllpService
from formats.hl7 import er7
from schemas.registry import decode
from tests.integration.test_mllp import mllp_settings
from tests.support.mllp_client import MllpClient

pytestmark = pytest.mark.integration

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
GOOD = (
    "MSH|^~\\&|PAS|CHU|AFF|HUB|20261124103000||ADT^A01^ADT_A01|{cid}|P|2.5|||||FRA|8859/1\r"
    "PID|||42^^^CHU^PI||MARTIN^Léa\rPV1||I\r"
)


def good(cid: str = "", sep: str = "\r") -> bytes:
    return GOOD.format(cid=cid or uuid.uuid4().hex[:16]).replace("\r", sep).encode("latin-1")


def msh(rest: str, *segments: str) -> bytes:
    return ("\r".join([f"MSH|^~\\&|PAS|CHU|AFF|HUB|2026||{rest}", *segments]) + "\r").encode("latin-1")


# (case id, bytes on the wire, expected (MSA-1, reason code) per reply; None reason = accepted)
CASES: list[tuple[str, bytes, list[tuple[str, str | None]]]] = [
    ("empty frame", encode_frame(b""), [("AR", "empty")]),
    ("only newlines", encode_frame(b"\r\n\r\n"), [("AR", "empty")]),
    ("no MSH", encode_frame(b"PID|||1\rPV1||I\r"), [("AR", "no_msh")]),
    ("MSH alone", encode_frame(b"MSH\r"), [("AR", "msh_too_short")]),
    ("MSH field separator only", encode_frame(b"MSH|\r"), [("AR", "msh_too_short")]),
    ("truncated encoding characters", encode_frame(b"MSH|^~\r"), [("AR", "msh_too_short")]),
    (
        "duplicate delimiters",
        encode_frame(b"MSH|^^\\&|A|F|R|RF|2026||ADT^A01|X|P|2.5\r"),
        [("AR", "bad_delimiters")],
    ),
    (
        "alphanumeric field separator",
        encode_frame(b"MSHA^~\\&AAAFARARFA2026AAADT^A01AXAPA2.5\r"),
        [("AR", "bad_delimiters")],
    ),
    ("NUL byte", encode_frame(msh("ADT^A01|N1|P|2.5", "PID|||1\x00")), [("AR", "nul_character")]),
    ("unknown charset", encode_frame(msh("ADT^A01|U1|P|2.5|||||FRA|EBCDIC")), [("AR", "unknown_charset")]),
    (
        "two messages in one frame",
        encode_frame(msh("ADT^A01|T1|P|2.5") + msh("ADT^A01|T2|P|2.5")),
        [("AR", "several_messages")],
    ),
    ("unsupported type SIU", encode_frame(msh("SIU^S12|S1|P|2.5")), [("AR", "unsupported_type")]),
    ("unsupported type QRY", encode_frame(msh("QRY^A19|Q1|P|2.5")), [("AR", "unsupported_type")]),
    ("empty MSH-9", encode_frame(msh("|E1|P|2.5")), [("AE", "missing_field")]),
    ("empty MSH-10", encode_frame(msh("ADT^A01||P|2.5")), [("AE", "missing_field")]),
    ("binary garbage in a frame", encode_frame(bytes(range(1, 11)) * 20), [("AR", "no_msh")]),
    ("lower-case segment", encode_frame(msh("ADT^A01|L1|P|2.5", "pid|||1")), [("AR", "bad_segment_name")]),
    ("two-letter segment", encode_frame(msh("ADT^A01|L2|P|2.5", "PI|||1")), [("AR", "bad_segment_name")]),
    ("oversize frame", VT + b"MSH|^~\\&|" + b"X" * 70_000 + FS + CR, [("AR", "oversize")]),
    ("garbage between frames", b"hello\x00\xff junk", []),
    ("unterminated frame then nothing", VT + b"MSH|^~\\&|PAS|CHU|AFF|HUB|2026||ADT^A01|UT1|P|2.5\r", []),
    ("incoming ACK is not acknowledged", encode_frame(msh("ACK^A01|K1|P|2.5", "MSA|AA|123")), []),
    # accepted despite oddities: stored, flagged when needed
    (
        "declared ASCII, latin-1 bytes",
        encode_frame(msh("ADT^A01|{cid}|P|2.5|||||FRA|ASCII", "PID|||1||NOËL")),
        [("AA", None)],
    ),
    (
        "declared UTF-8, invalid bytes",
        encode_frame(msh("ADT^A01|{cid}|P|2.5|||||FRA|UNICODE UTF-8", "PID|||1||\xe9")),
        [("AA", None)],
    ),
    ("LF segment separators", encode_frame(good(sep="\n")), [("AA", None)]),
    ("CRLF segment separators", encode_frame(good(sep="\r\n")), [("AA", None)]),
    ("missing CR after 0x1C", VT + good() + FS, [("AA", None)]),
    (
        "very long field",
        encode_frame(msh("ORU^R01|{cid}|P|2.5", "OBX|1|TX|X^Y||" + "a" * 50_000)),
        [("AA", None)],
    ),
    (
        "Z-segments of IHE PAM France",
        encode_frame(msh("ADT^A01|{cid}|P|2.5", "ZBE|MVT1^CHU|2026|||INSERT|N", "ZFD|||N")),
        [("AA", None)],
    ),
    (
        "custom delimiters",
        encode_frame(b"MSH#!~\\$#PAS#CHU#AFF#HUB#2026##ADT!A01#{cid}#P#2.5\rPID###1\r"),
        [("AA", None)],
    ),
    ("byte order mark", encode_frame(b"\xef\xbb\xbf" + good()), [("AA", None)]),
    ("escape sequences in MSH-10", encode_frame(msh("ADT^A01|E\\F\\{cid}|P|2.5")), [("AA", None)]),
    ("two frames in one write", encode_frame(good()) + encode_frame(good()), [("AA", None), ("AA", None)]),
]


@pytest.fixture
async def door(settings, live_kafka, registry):
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        mllp_settings(settings),
        CollectorRegistry(),
        raw_topic=f"it.bad.raw.{suffix}",
        dlq_topic=f"it.bad.dlq.{suffix}",
        ack_topic=f"it.bad.ack.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    yield service, port
    await service.stop()


async def test_bad_input_corpus(door, reader, registry):
    service, port = door
    assert len(CASES) >= 30
    client = await MllpClient.connect("127.0.0.1", port)
    accepted = 0
    rejected = 0
    expected_reasons: list[str] = []
    for name, wire, expected in CASES:
        wire = wire.replace(b"{cid}", uuid.uuid4().hex[:12].encode())
        await client.send_raw(wire)
        try:
            replies = await client.receive(len(expected), timeout=10) if expected else []
        except TimeoutError:
            pytest.fail(f"no answer to case: {name}")
        for reply, (code, reason) in zip(replies, expected, strict=True):
            text = reply.decode("latin-1").lstrip("\ufeff")
            ack = er7.parse(text)
            assert ack.get("MSA-1") == code, (name, text)
            if code in ("AR", "AE"):
                rejected += 1
                assert reason is not None
                expected_reasons.append(reason)
                err = ack.segment("ERR")
                assert err is not None, name
                assert ack.get("ERR-3.1"), name
                assert ack.get("ERR-8"), name  # a human-readable reason
            else:
                accepted += 1
        # the line is still usable: a good message right after gets AA with its own MSH-10
        cid = uuid.uuid4().hex[:16]
        if name == "unterminated frame then nothing":
            await client.send_raw(encode_frame(good(cid)))  # the new 0x0B starts a fresh frame
        else:
            await client.send(good(cid))
        try:
            (reply,) = await client.receive(1, timeout=10)
        except TimeoutError:
            pytest.fail(f"no answer to the good message after case: {name}")
        after = er7.parse(reply.decode("latin-1"))
        assert (after.get("MSA-1"), after.get("MSA-2")) == ("AA", cid), name
        accepted += 1
    await client.close()

    raw = reader(service.raw_topic, accepted, partitions=3)
    assert len(raw) == accepted, "exactly the accepted messages were stored, nothing half-written"
    records = [decode(registry, v) for _, v in raw]
    # flagged, not dropped: ASCII declared with latin-1 bytes, invalid UTF-8, and a UTF-8 BOM on 8859/1
    assert sum(r["charset_mismatch"] for r in records) == 3

    dlq = [decode(registry, v) for _, v in reader(service.dlq_topic, rejected - 1, partitions=3)]
    assert len(dlq) == rejected - 1  # every refused message but the oversize frame, whose bytes were skipped
    assert all(d["stage"] == "ingest" and d["reason"] for d in dlq)
    # each refusal has its precise reason; the oversize frame is answered but its bytes are not kept
    assert sorted(d["reason_code"] for d in dlq) == sorted(r for r in expected_reasons if r != "oversize")

    metrics = generate_latest(service.metrics_registry).decode()
    for reason in ("oversize", "garbage", "unterminated", "missing_cr"):
        assert f'affluent_mllp_frame_errors_total{{reason="{reason}"}}' in metrics, reason
    assert "NOËL" not in metrics and "MARTIN" not in metrics
