"""HL7 batches (FHS/BHS … BTS/FTS) over MLLP: each message on its own, one batch acknowledgement.

Before: a batch frame was refused whole (the tokenizer saw no MSH first: ``no_msh``), so every message
of a batch-sending system was lost to a dead letter.
"""

from __future__ import annotations

import asyncio

from connectors.mllp.batch import Batch, is_batch, split_batch
from connectors.mllp.framing import Frame, FrameDecoder
from connectors.mllp.intake import Rejected
from formats.hl7 import er7
from formats.reasons import ReasonCode
from tests.unit.test_mllp_handler_fuzz import PEER, make_server


def msh(cid: str, event: str = "A01") -> str:
    return (
        f"MSH|^~\\&|APP|CHU-SYNTH|HUB|HUB|20260101120000||ADT^{event}|{cid}|P|2.5\r"
        "EVN|A01|20260101120000\rPID|1||IPP1^^^CHU-SYNTH&1.2.250.1.999&ISO^PI||FICTIF^Test\r"
        "PV1|1|I|||||||||||||||||V1^^^CHU-SYNTH&1.2.250.1.999&ISO^VN\r"
    )


def batch(*messages: str, count: str | None = None, file: bool = False) -> bytes:
    n = str(len(messages)) if count is None else count
    body = "BHS|^~\\&|APP|CHU-SYNTH|HUB|HUB|20260101120000||||B-42\r" + "".join(messages) + f"BTS|{n}\r"
    if file:
        body = "FHS|^~\\&|APP|CHU-SYNTH|HUB|HUB|20260101120000||||F-7\r" + body + "FTS|1\r"
    return body.encode("latin-1")


def test_a_batch_is_split_into_its_messages_with_their_own_bytes() -> None:
    payload = batch(msh("C1"), msh("C2"), file=True)
    assert is_batch(payload) and not is_batch(msh("C1").encode())
    split = split_batch(payload)
    assert isinstance(split, Batch)
    assert split.messages == [msh("C1").encode(), msh("C2").encode()]
    assert (split.batch_control_id, split.file_control_id) == ("B-42", "F-7")
    assert split.header.sending_facility == "CHU-SYNTH"


def test_an_envelope_that_does_not_hold_together_is_refused_whole() -> None:
    cases = {
        "BTS-1": batch(msh("C1"), msh("C2"), count="3"),  # truncated: 3 announced, 2 present
        "BHS": batch(msh("C1")) + batch(msh("C2")),  # two batches in one frame
        "segment 2": b"BHS|^~\\&|A|F\rPID|1\r" + msh("C1").encode() + b"BTS|1\r",
    }
    for location, payload in cases.items():
        refused = split_batch(payload)
        assert isinstance(refused, Rejected), location
        assert (refused.reason_code, refused.location) == (ReasonCode.BAD_BATCH, location)


def answer(payload: bytes) -> tuple[er7.Message, list[er7.Message], object]:
    server, producer, dead = make_server()
    reply = asyncio.run(server.handle_frame(payload, PEER))
    [frame] = FrameDecoder().feed(reply)  # one frame: the batch acknowledgement
    assert isinstance(frame, Frame)
    text = frame.payload.decode("latin-1")
    segments = [s for s in text.split("\r") if s]
    acks = []
    current: list[str] = []
    for seg in segments:
        if seg.startswith("MSH") and current:
            acks.append(er7.parse("\r".join(current) + "\r"))
            current = []
        if seg.startswith(("MSH", "MSA", "ERR")):
            current.append(seg)
    if current:
        acks.append(er7.parse("\r".join(current) + "\r"))
    envelope = er7.parse("MSH" + segments[0][3:] + "\r")
    return envelope, acks, (producer, dead, segments)


def test_each_message_is_stored_or_refused_and_answered_in_one_batch_ack() -> None:
    envelope, acks, (producer, dead, segments) = answer(
        batch(msh("C1"), msh("C2", "A34"), msh("C3"), file=True)
    )
    assert [s[:3] for s in segments if not s.startswith(("MSH", "MSA", "ERR"))] == [
        "FHS",
        "BHS",
        "BTS",
        "FTS",
    ]
    bhs = next(s for s in segments if s.startswith("BHS")).split("|")
    assert bhs[11] == "B-42" and bhs[4:6] == ["APP", "CHU-SYNTH"]  # BHS-12 = their BHS-11, parties swapped
    assert next(s for s in segments if s.startswith("BTS")) == "BTS|3"
    assert envelope.segments[0].value(12) == "F-7"  # FHS-12 = their FHS-11
    assert [(a.get("MSA-1"), a.get("MSA-2")) for a in acks] == [("AA", "C1"), ("AR", "C2"), ("AA", "C3")]
    stored = [v for topic, v, _ in producer.sent if topic != "ack"]
    assert len(stored) == 2  # C1 and C3, each its own raw record
    assert [d["reason_code"] for d in dead.written] == [ReasonCode.UNSUPPORTED_EVENT]
    assert dead.written[0]["payload"] == msh("C2", "A34").encode()  # the message, not the batch


def test_a_resent_batch_stores_nothing_new_and_gets_the_same_acks() -> None:
    server, producer, _ = make_server()
    payload = batch(msh("C1"), msh("C2"))
    first = asyncio.run(server.handle_frame(payload, PEER))
    again = asyncio.run(server.handle_frame(payload, PEER))
    assert len([t for t, _, _ in producer.sent if t != "ack"]) == 2
    msa = lambda reply: [s for s in reply.split(b"\r") if s.startswith(b"MSA")]  # noqa: E731
    assert msa(first) == msa(again)


def test_an_empty_batch_is_answered_with_an_empty_batch() -> None:
    _, acks, (producer, _, segments) = answer(batch())
    assert acks == [] and producer.sent == []
    assert next(s for s in segments if s.startswith("BTS")) == "BTS|0"


def test_a_bad_envelope_gets_one_negative_ack_and_one_dead_letter() -> None:
    server, producer, dead = make_server()
    reply = asyncio.run(server.handle_frame(batch(msh("C1"), count="9"), PEER))
    [frame] = FrameDecoder().feed(reply)
    assert isinstance(frame, Frame)
    ack = er7.parse(frame.payload.decode("latin-1"))
    assert ack.get("MSA-1") == "AR" and ack.get("ERR-2.1") == "BTS"
    assert producer.sent == [] and [d["reason_code"] for d in dead.written] == [ReasonCode.BAD_BATCH]
