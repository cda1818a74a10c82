"""Writing and reading ``control.audit`` (entries are built by :mod:`schemas.audit`).

:class:`AuditLog` appends with the durable producer: ``await record(entry)`` returns only once Kafka
holds the entry (``acks=all``), so a caller that records *before* acting — the opposition service does —
never leaves an action without its entry. :func:`read_entries` is a bounded read: from the start of the
topic to the end it had when the read began, then it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, TypeVar

from affluent.core.kafka import ensure_topics, wait_for_kafka
from affluent.core.producer import Delivery, DurableProducer
from affluent.core.ranges import read_range
from affluent.core.settings import Settings
from affluent.core.topics import CONTROL_AUDIT, audit_topic
from schemas.audit import AuditAction, selected
from schemas.catalog import entry_for, schema_text
from schemas.registry import AvroCodec, Registry, decode

T = TypeVar("T")
KAFKA_WAIT_S = 30.0


class AuditLog:
    """The audit trail's writer; shares the caller's producer when given one (not closed here then)."""

    def __init__(self, settings: Settings, producer: DurableProducer | None = None) -> None:
        self.settings = settings
        self._producer = producer
        self._owned = producer is None
        self._codec: AvroCodec | None = None

    def open(self) -> None:
        """Topic (with its retention) and schema ready; blocking, call it once before :meth:`record`."""
        ensure_topics(self.settings.kafka, [audit_topic(self.settings.audit.retention_ms)])
        entry = entry_for(CONTROL_AUDIT)
        self._codec = AvroCodec(
            Registry(self.settings.registry), entry.subject, schema_text(entry), entry.compatibility
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.open)

    async def record(self, entry: dict[str, Any]) -> Delivery:
        """Append ``entry``; returns once Kafka holds it, else raises KafkaUnavailable."""
        if self._codec is None:
            raise RuntimeError("AuditLog.start() was not awaited")
        if self._producer is None:
            self._producer = DurableProducer(self.settings.kafka)
        return await self._producer.send(CONTROL_AUDIT, self._codec.encode(entry), entry["entry_id"].encode())

    def close(self) -> None:
        if self._owned and self._producer is not None:
            self._producer.close()
            self._producer = None


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, also from code already inside an event loop (then on a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main).result()


def record_now(settings: Settings, entry: dict[str, Any], wait_s: float = KAFKA_WAIT_S) -> Delivery:
    """For a command: open the trail, append one entry durably, close. Raises KafkaUnavailable (or a
    registry error) when it cannot be written — the caller must then not act."""
    wait_for_kafka(settings.kafka, wait_s)
    log = AuditLog(settings)
    log.open()

    async def go() -> Delivery:
        try:
            return await log.record(entry)
        finally:
            await asyncio.to_thread(log.close)

    return _run(go())


def read_entries(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    action: AuditAction | None = None,
    wait_s: float = 10.0,
) -> list[dict[str, Any]]:
    """The entries selected (``since`` ≤ at < ``until``, ``action``), oldest first, read up to the end
    the topic had when the read began. A missing topic is an empty trail."""
    wait_for_kafka(settings.kafka, wait_s)
    registry = Registry(settings.registry)
    out: list[dict[str, Any]] = []
    for record in read_range(settings.kafka, [CONTROL_AUDIT], since, None, wait_s):
        if record.value is not None:
            entry = decode(registry, record.value)
            if selected(entry, since, until, action):
                out.append(entry)
    out.sort(key=lambda e: e["at"])
    return out
