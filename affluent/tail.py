"""``affluent tail <topic>``: a topic's records decoded through the schema registry, one JSON object a line.

For looking at what a destination receives (``affluent tail national.hdh.observation.v1``): new records
as they come, or with ``--from-beginning`` the topic as it is, then exit (``--follow`` to keep waiting).
It reads with a throw-away consumer group and commits nothing, so it never moves a real consumer's
position. A read of an identified topic (every one but ``national.*`` and ``control.audit``:
:func:`schemas.audit.is_identified`) is first recorded in the audit trail, with the OS user; no entry
written, no read. Bytes (raw payloads) are shown in base64 and times in ISO 8601, so every line is valid JSON.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from affluent.audit_cli import os_user
from affluent.core.errors import AffluentError, ConfigError, KafkaUnavailable, Unavailable
from affluent.core.kafka import make_consumer, wait_for_kafka
from affluent.core.settings import Settings
from schemas.audit import AuditAction, AuditChannel, audit_entry, is_identified
from schemas.audit_log import record_now
from schemas.registry import Registry, decode


def _json_default(value: object) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=_json_default, ensure_ascii=False, sort_keys=False)


def tail(
    settings: Settings,
    topic: str,
    from_beginning: bool = False,
    limit: int | None = None,
    out: Callable[[str], None] = print,
    idle_timeout_s: float | None = None,
    follow: bool = True,
    wait_s: float = 10.0,
    who: str | None = None,
) -> int:
    """Print records until `limit` were shown; without `follow`, also when every partition is read to
        the end it had when the tail started (``--from-beginning`` alone: the topic as it is, then exit);
        with `idle_timeout_s`, also when nothing came for that long; otherwise until interrupted. Returns how
        many were printed. Kafka not answering within `wait_s` is a KafkaUnavailable. ``who`` is the OS user
    the audit entry names (default: the current one)."""
    wait_for_kafka(settings.kafka, timeout_s=wait_s)
    registry = Registry(settings.registry)
    overrides = {} if follow else {"enable.partition.eof": True}
    consumer = make_consumer(settings.kafka, group_id=f"affluent-tail-{uuid.uuid4().hex[:8]}", **overrides)
    try:
        try:
            md = consumer.list_topics(topic, timeout=wait_s).topics.get(topic)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {settings.kafka.bootstrap_servers} did not list {topic} within {wait_s:g} s "
                f"({exc.args[0]})"
            ) from None
        if md is None or md.error is not None or not md.partitions:
            raise ConfigError(
                f"topic {topic} does not exist on Kafka at {settings.kafka.bootstrap_servers}: "
                "check its name (national.<destination>.<kind>.v1, canonical.<kind>, ingest.*.raw, dlq.*)"
            )
        if is_identified(topic):
            entry = audit_entry(AuditAction.TOPIC_READ, who or os_user(), AuditChannel.CLI, [topic])
            record_now(settings, entry, wait_s=wait_s)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in md.partitions])
        at_end: set[int] = set()
        shown = 0
        idle = 0.0
        while limit is None or shown < limit:
            msg = consumer.poll(0.5)
            error = msg.error() if msg is not None else None
            if msg is not None and error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition() or 0)
                    if at_end >= set(md.partitions):
                        break
                continue
            if msg is None:
                idle += 0.5
                if idle_timeout_s is not None and idle >= idle_timeout_s:
                    break
                continue
            idle = 0.0
            value = msg.value()
            if value is None:
                out(json.dumps({"tombstone": True, "partition": msg.partition(), "offset": msg.offset()}))
            else:
                try:
                    out(json_line(decode(registry, value)))
                except Unavailable:
                    raise  # the registry is away: not this record's fault, and no use printing every one
                except AffluentError as exc:
                    out(
                        json.dumps(
                            {"undecodable": str(exc), "partition": msg.partition(), "offset": msg.offset()}
                        )
                    )
            shown += 1
        return shown
    finally:
        consumer.close()
