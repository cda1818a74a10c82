"""Every ACK the door sends parses, echoes the sender's MSH-10 in MSA-2, and fits in its own frame.

The ACK quotes the sender's header (parties, MSH-10, MSH-12, MSH-18) in the sender's delimiters and
charset, so a hostile or odd header is the ACK builder's problem. Before these tests, an escaped
``\\X0B\\`` or ``\\X1C\\`` in MSH-10 came back as a raw frame byte (the sender got a broken frame for a
stored message), a non-ASCII delimiter came back as "?", and a "+" delimiter broke MSH-7.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.mllp.framing import Frame, FrameDecoder
from formats.hl7 import er7
from tests.unit.test_mllp_handler_fuzz import PEER, make_server

# Printable, non-alphanumeric, non-space: what er7.Delimiters accepts, with some non-ASCII ones.
DELIMITER_POOL = list("|^~\\&#!+.*$%@/:;=?§¤¦°€")
CHARSETS = st.sampled_from(
    [("", "latin-1"), ("", "utf-8"), ("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8")]
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """(framed payload, its codec, the sender's MSH-10 as the door reads it)."""
    declared, codec = draw(CHARSETS)
    pool = [c for c in DELIMITER_POOL if codec == "utf-8" or c != "€"]
    fs, cs, rs, es, ss = draw(st.permutations(pool).map(lambda p: p[:5]))
    delims = fs + cs + rs + es + ss
    plain = [c for c in "AZaz09-_ éÉœ" if c not in delims and (codec == "utf-8" or c != "œ")]
    sequences = [f"{es}X0B{es}", f"{es}X1C{es}", f"{es}X0D{es}", f"{es}F{es}", f"{es}S{es}", f"{es}E{es}"]
    token = st.one_of(st.sampled_from(plain), st.sampled_from(sequences))
    value = st.lists(token, max_size=6).map("".join)
    control_id = draw(st.lists(token, min_size=1, max_size=8).map("".join).filter(lambda v: v.strip(" ")))
    mtype = draw(st.sampled_from(["ADT", "ORU", "SIU"]))
    fields = [
        "MSH",
        cs + rs + es + ss,
        draw(value),
        draw(value),
        draw(value),
        draw(value),
        "20261124103000",
        "",
        f"{mtype}{cs}A01",
        control_id,
        "P",
        draw(st.sampled_from(["2.5", "2.5.1", ""])),
    ]
    if declared or draw(st.booleans()):
        fields += ["", "", draw(st.sampled_from(["", "AL"])), "", "", declared]
    text = fs.join(fields) + "\rPID" + fs + "1\r"
    expected = er7.parse(text).segments[0].value(10, 1, 1) or ""
    return text.encode(codec), codec, expected


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(case=messages())
def test_every_ack_parses_and_echoes_msh10_in_one_frame(case: tuple[bytes, str, str]) -> None:
    payload, codec, control_id = case
    server, _, _ = make_server()
    reply = asyncio.run(server.handle_frame(payload, PEER))
    events = FrameDecoder().feed(reply)
    assert events and all(isinstance(e, Frame) for e in events)
    assert reply.count(b"\x0b") == reply.count(b"\x1c") == len(events), "one frame per ACK, no stray bytes"
    for event in events:
        assert isinstance(event, Frame)
        ack = er7.parse(event.payload.decode(codec))
        [msa] = ack.segments_named("MSA")
        assert msa.value(1) in ("AA", "AE", "AR", "CA", "CE", "CR")
        assert (msa.value(2, 1, 1) or "") == control_id
        assert ack.segments[0].value(9, 1, 1) == "ACK"
