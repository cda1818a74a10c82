"""Arbitrary bytes never raise out of the MLLP handler, and every complete frame gets an answer or is an ACK.

Kafka is replaced by in-memory fakes here (a unit test of the handler's decision logic); the same
handler runs against the real broker in tests/integration/test_mllp*.py.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from affluent.core.errors import KafkaUnavailable
from affluent.core.settings import MllpSettings
from connectors.mllp.framing import Frame, FrameDecoder
from connectors.mllp.server import MllpServer, Peer
from formats.hl7 import er7


class FakeProducer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail = fail

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None
    ) -> None:
        if self.fail:
            raise KafkaUnavailable("down")
        self.sent.append((topic, value, key))

    async def send_all(self, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
        if self.fail:
            raise KafkaUnavailable("down")
        self.sent.extend(records)

    def send_nowait(
        self, topic: str, value: bytes | None, key: bytes | None = None, on_failure: Any = None
    ) -> None:
        if self.fail:
            raise KafkaUnavailable("down")
        self.sent.append((topic, value, key))


class FakeCodec:
    def encode(self, record: dict[str, Any]) -> bytes:
        assert isinstance(record["payload"], bytes)
        return repr(sorted(record)).encode()


class FakeCache:
    topic = "ack"

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    def remember(self, key: str, acks: bytes) -> None:
        self.entries[key] = acks

    def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    def __len__(self) -> int:
        return len(self.entries)

    async def store(self, producer: FakeProducer, key: str, acks: bytes) -> None:
        await producer.send("ack", acks, key.encode())
        self.entries[key] = acks


class FakeDeadLetters:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    async def write(self, **fields: Any) -> bool:
        self.written.append(fields)
        return True


def make_server(fail: bool = False) -> tuple[MllpServer, FakeProducer, FakeDeadLetters]:
    producer, dead = FakeProducer(fail), FakeDeadLetters()
    server = MllpServer(
        MllpSettings(port=0, metrics_port=None, max_frame_bytes=4096),
        producer,  # type: ignore[arg-type]
        FakeCodec(),  # type: ignore[arg-type]
        FakeCache(),  # type: ignore[arg-type]
        dead,  # type: ignore[arg-type]
        CollectorRegistry(),
    )
    return server, producer, dead


PEER = Peer("127.0.0.1:1", None)
HL7ISH = st.text(
    alphabet=st.sampled_from(list("MSHPIDOBX|^~\\&\r\n0123456789AÉé \x00\x0b\x1c")), max_size=300
)


def answers(framed: bytes) -> list[er7.Message]:
    return [
        er7.parse(e.payload.decode("latin-1")) for e in FrameDecoder().feed(framed) if isinstance(e, Frame)
    ]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(payload=st.one_of(st.binary(max_size=400), HL7ISH.map(lambda s: s.encode("utf-8"))))
def test_any_frame_payload_gets_a_valid_answer(payload: bytes) -> None:
    server, producer, dead = make_server()
    reply = asyncio.run(server.handle_frame(payload, PEER))
    msgs = answers(reply)
    if not msgs:  # only an incoming ACK may stay unanswered
        assert b"ACK" in payload
        return
    codes = [m.get("MSA-1") for m in msgs]
    assert all(c in ("AA", "AE", "AR", "CA", "CE", "CR") for c in codes)
    stored = any(topic != "ack" for topic, _, _ in producer.sent)
    assert stored == (codes[0] in ("AA", "CA"))
    if not stored:
        assert len(dead.written) == 1


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(stream=st.binary(max_size=2000), cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_arbitrary_stream_never_raises(stream: bytes, cuts: list[int]) -> None:
    server, _, _ = make_server()
    decoder = FrameDecoder(4096)

    async def run() -> None:
        bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
        for a, b in itertools.pairwise(bounds):
            for event in decoder.feed(stream[a:b]):
                await server._on_event(event, PEER)
        for event in decoder.close():
            await server._on_event(event, PEER)

    asyncio.run(run())


def test_kafka_failure_answers_ar_and_stores_nothing() -> None:
    server, producer, _ = make_server(fail=True)
    msg = b"MSH|^~\\&|A|F|R|RF|2026||ADT^A01|K1|P|2.5\rPID|||1\r"
    (ack,) = answers(asyncio.run(server.handle_frame(msg, PEER)))
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AR", "K1")
    assert producer.sent == []


def test_valid_message_is_stored_then_acknowledged_and_replayed() -> None:
    server, producer, _ = make_server()
    msg = b"MSH|^~\\&|A|F|R|RF|2026||ORU^R01|K2|P|2.5\rPID|||1\r"
    first = asyncio.run(server.handle_frame(msg, PEER))
    second = asyncio.run(server.handle_frame(msg, PEER))
    assert first == second
    assert [m.get("MSA-1") for m in answers(first)] == ["AA"]
    assert [t for t, _, _ in producer.sent] == ["ingest.hl7v2.raw", "ack"]
