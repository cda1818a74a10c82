"""The stage shell (streams/app.py) against the real broker: outputs before offsets, a clean stop commits
what was finished, a restart resumes after it, and outputs Kafka refuses are never passed over silently."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from affluent.core.kafka import make_consumer, make_producer
from affluent.core.settings import KafkaSettings, StreamsSettings
from streams.app import BatchProducer, StageDeliveryFailed, StageWorker, next_offsets
from streams.contract import StageSpec

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes | None


def committed(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> int:
    consumer = make_consumer(kafka, group_id=group)
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(0, tp.offset) for tp in tps)
    finally:
        consumer.close()


def produce(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(kafka)
    for n, value in enumerate(values):
        producer.produce(topic, value, f"k{n % 5}".encode())
    assert producer.flush(20) == 0


def run_in_thread(worker: StageWorker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_outputs_confirmed_then_offsets_committed_and_a_restart_resumes(live_kafka, new_topic, reader):
    source, sink = new_topic("test.stage.in", partitions=3), new_topic("test.stage.out", partitions=3)
    group = f"test-stage-{uuid.uuid4().hex[:8]}"
    streams = StreamsSettings(batch_size=50, batch_window_s=0.05)
    seen: list[bytes] = []

    def upper(value: bytes | None, topic: str, partition: int, offset: int) -> list[Out]:
        seen.append(value or b"")
        return [Out(sink, b"k", (value or b"").upper()), Out(sink, b"k", b"second " + (value or b""))]

    produce(live_kafka, source, [f"record {n}".encode() for n in range(300)])
    worker = StageWorker(StageSpec(group, (source,), upper), live_kafka, streams, CollectorRegistry(), None)
    thread = run_in_thread(worker)
    outputs = reader(sink, 600, timeout_s=60, partitions=3)
    worker.stop()
    thread.join(30)
    assert not thread.is_alive(), "the worker stops between batches when asked"

    assert len(outputs) == 600
    assert {v for _, v in outputs} >= {f"RECORD {n}".encode() for n in range(300)}
    assert committed(live_kafka, group, source, 3) == 300, "a clean stop commits every finished batch"

    # A restart in the same group reads only what came after.
    produce(live_kafka, source, [b"late one", b"late two"])
    seen.clear()
    again = StageWorker(StageSpec(group, (source,), upper), live_kafka, streams, CollectorRegistry(), None)
    thread = run_in_thread(again)
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    again.stop()
    thread.join(30)
    assert sorted(seen) == [b"late one", b"late two"]
    assert committed(live_kafka, group, source, 3) == 302


def test_outputs_kafka_never_confirms_raise_after_every_attempt(live_kafka):
    # No such topic and auto-creation is off: librdkafka reports a failure after the delivery timeout.
    kafka = live_kafka.model_copy(update={"delivery_timeout_ms": 1500})
    producer = BatchProducer(kafka, "test-stage")
    slept: list[float] = []
    missing = f"test.stage.missing.{uuid.uuid4().hex[:8]}"
    with pytest.raises(StageDeliveryFailed):
        producer.deliver([Out(missing, b"k", b"v")], sleep=slept.append)
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0], "resent whole, backing off, before giving up"


def test_next_offsets_point_past_the_last_record_of_each_partition(live_kafka, new_topic):
    topic = new_topic("test.stage.offsets", partitions=2)
    produce(live_kafka, topic, [b"a", b"b", b"c", b"d"])
    consumer = make_consumer(live_kafka, group_id=f"test-stage-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    messages = []
    deadline = time.monotonic() + 20
    while len(messages) < 4 and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(10, 0.5) if m.error() is None]
    consumer.close()
    expected = {}
    for m in messages:
        expected[m.partition()] = max(expected.get(m.partition(), 0), m.offset() + 1)
    assert {(tp.partition, tp.offset) for tp in next_offsets(messages)} == set(expected.items())
