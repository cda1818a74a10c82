"""Where did each acknowledged message end up? Reads output topics and matches records to raw ids.

The hub's promise is checkable: every message a sender saw acknowledged must be found downstream —
as canonical (later national) events or as a dead letter with its reason. The demo, the end-to-end
tests and the fault suite all ask this question the same way.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import TopicPartition

from affluent.kafka import make_consumer
from affluent.settings import KafkaSettings
from schemas.registry import Registry, decode


def raw_id_of(record: dict[str, Any]) -> str | None:
    envelope = record.get("envelope")
    if isinstance(envelope, dict):
        return str(envelope["lineage"]["raw_id"])
    raw_id = record.get("raw_id")
    return str(raw_id) if raw_id is not None else None


def collect(
    kafka: KafkaSettings,
    registry: Registry,
    topics: Iterable[str],
    raw_ids: set[str],
    timeout_s: float,
    expected: int | None = None,
    quiet_s: float = 3.0,
    progress: Callable[[int, int], None] | None = None,
    key_of: Callable[[dict[str, Any]], str | None] = lambda record: raw_id_of(record),
) -> dict[str, list[dict[str, Any]]]:
    """Records of `topics` (read from the start) whose `key_of` (by default: the raw id they stem from)
    is in `raw_ids`, grouped by topic.

    Stops at `expected` records, or — when `expected` is None — once every wanted id has at least one
    record and nothing new came for `quiet_s` seconds, or at the timeout.
    """
    consumer = make_consumer(kafka, group_id=f"affluent-accounting-{uuid.uuid4().hex[:8]}")
    assignment: list[TopicPartition] = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None:
            assignment += [TopicPartition(topic, p, 0) for p in md.partitions]
    consumer.assign(assignment)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    accounted: set[str] = set()
    count = 0
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and count >= expected:
                break
            if expected is None and accounted >= raw_ids and time.monotonic() - last_new > quiet_s:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.value() is None:
                continue
            record = decode(registry, msg.value() or b"")
            raw_id = key_of(record)
            if raw_id in raw_ids:
                found[msg.topic() or ""].append(record)
                accounted.add(str(raw_id))
                count += 1
                last_new = time.monotonic()
                if progress is not None:
                    progress(len(accounted), count)
    finally:
        consumer.close()
    return found
