"""Reading a time range of topics to an end fixed at the start: the one loop every operator command uses.

``affluent dlq``, ``affluent replay`` and ``affluent audit list`` all ask the same of Kafka: the records
from the first offset at a time (Kafka's time index) up to where each partition ended when the command
began, in a throw-away group that commits nothing — so the command ends, and never moves a real
consumer. Each had its own loop; they differed in how they treated an empty partition, a time after the
last record, or a broker that stops answering. This is the loop, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0  # the record's Kafka timestamp (producer's create time), 0 when it has none


@dataclass(frozen=True, slots=True)
class Span:
    """One partition's offsets to read: ``start`` included, ``stop`` excluded."""

    topic: str
    partition: int
    start: int
    stop: int


def _at(consumer: Consumer, parts: list[TopicPartition], when: datetime, wait_s: float) -> list[int]:
    """First offset at or after ``when`` per partition; -1 when every record is older."""
    stamp = int(when.timestamp() * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(tp.topic, tp.partition, stamp) for tp in parts], timeout=wait_s
    )
    return [int(tp.offset) for tp in found]


def spans(
    kafka: KafkaSettings,
    topics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    wait_s: float = 10.0,
) -> list[Span]:
    """The non-empty spans of ``topics`` between ``since`` and ``until`` (or the end as it is now).
    A topic that does not exist has none."""
    consumer = make_consumer(kafka, group_id=f"affluent-range-{uuid.uuid4().hex[:8]}")
    try:
        try:
            metadata = consumer.list_topics(timeout=wait_s).topics
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka did not list its topics within {wait_s:g} s ({exc.args[0]})"
            ) from None
        parts = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata and metadata[t].error is None
            for p in sorted(metadata[t].partitions)
        ]
        if not parts:
            return []
        bounds = [consumer.get_watermark_offsets(tp, timeout=wait_s) for tp in parts]
        starts = [low for low, _ in bounds] if since is None else _at(consumer, parts, since, wait_s)
        stops = [high for _, high in bounds]
        if until is not None:
            stops = [
                high if at < 0 else at
                for at, high in zip(_at(consumer, parts, until, wait_s), stops, strict=True)
            ]
        return [
            Span(tp.topic, tp.partition, max(start, low), stop)
            for tp, (low, _), start, stop in zip(parts, bounds, starts, stops, strict=True)
            if start >= 0 and max(start, low) < stop
        ]
    finally:
        consumer.close()


def read_spans(kafka: KafkaSettings, ranges: Sequence[Span], wait_s: float = 10.0) -> Iterator[Record]:
    """Every record of ``ranges``, in each partition's order; raises KafkaUnavailable when Kafka stops
    answering for ``wait_s`` before the ends are reached."""
    if not ranges:
        return
    stops = {(s.topic, s.partition): s.stop for s in ranges}
    consumer = make_consumer(
        kafka, group_id=f"affluent-range-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    try:
        consumer.assign([TopicPartition(s.topic, s.partition, s.start) for s in ranges])
        todo = set(stops)
        idle = 0.0
        while todo:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if idle > wait_s:
                    raise KafkaUnavailable(f"Kafka stopped answering while {len(todo)} partitions were read")
                continue
            idle = 0.0
            topic, partition, offset, error = msg.topic(), msg.partition(), msg.offset(), msg.error()
            if topic is None or partition is None:
                continue
            where = (topic, partition)
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailable(f"reading {topic}: {error.name()}")
                todo.discard(where)  # the end came before the stop (records removed meanwhile)
                continue
            if offset is None or where not in todo or offset >= stops[where]:
                todo.discard(where)
                continue
            if offset + 1 >= stops[where]:
                todo.discard(where)
            kind, stamp = msg.timestamp()
            yield Record(topic, partition, offset, msg.key(), msg.value(), stamp if kind and stamp > 0 else 0)
    finally:
        consumer.close()


def read_range(
    kafka: KafkaSettings,
    topics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    wait_s: float = 10.0,
) -> Iterator[Record]:
    """:func:`spans` then :func:`read_spans`."""
    yield from read_spans(kafka, spans(kafka, topics, since, until, wait_s), wait_s)
