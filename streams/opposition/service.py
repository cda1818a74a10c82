"""Registering and withdrawing objections against the real topics; shared by the CLI and the HTTP endpoint.

Order of writes for a registration, each confirmed by Kafka (``acks=all``) before the next:

1. the registry entries (keyed hashes) in ``control.opposition`` — from then on every pseudonymize
   worker drops the patient's events as soon as its view of the registry has the entry (a worker
   tails the registry; the lag is one poll);
2. the OPPOSITION retractions on ``national.<destination>.retraction.v1``, one per identity form and
   kept key, keyed by the pseudonym they name — so the platform deletes what it already holds.

Before both, the audit entry (``control.audit``: who, which keyed hashes, outcome ok) is confirmed by
Kafka: an objection is never in force without its entry. Should a later step fail, a second entry
(refused, kafka_unavailable) is attempted, best effort; a refusal of the request itself (no token, a body
naming nobody) is recorded the same way, without delaying the answer.

If the second step fails the caller gets an error and registers again: entries are idempotent, and a
second retraction for the same patient is harmless. Nothing identifying is logged; the service's
metrics count requests and retractions per destination only.

The service holds the destinations' keys (it computes their pseudonyms), so it belongs to the same
trust zone as the pseudonymize workers and reads its keys the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter

from affluent.core.compacted import CompactedView
from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.limits import refused_connections
from affluent.core.metrics import retractions
from affluent.core.producer import DurableProducer
from affluent.core.settings import Settings
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
from schemas.audit import AuditAction, AuditChannel, AuditOutcome, AuditReason, audit_entry
from schemas.audit_log import AuditLog
from schemas.registry import Registry
from streams.opposition.objection import (
    Objection,
    national_retractions,
    registry_entries,
    retraction_records,
)
from streams.pseudonymize.keys import KeyProvider
from streams.pseudonymize.pseudonym import OPPOSITION_KEYRING
from streams.pseudonymize.stage import national_headers
from streams.pseudonymize.transform import Feed

log = logging.getLogger(__name__)

OPPOSED = b"1"


@dataclass(frozen=True, slots=True)
class Registered:
    entries: int
    retractions: int


class OppositionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "affluent_opposition_requests",
            "Objection requests by action (register, withdraw) and outcome (done, invalid, "
            "unauthorized, kafka_unavailable)",
            ["action", "outcome"],
            registry=registry,
        )
        self.retractions = retractions(registry)
        self.connections_refused = refused_connections(registry)


class OppositionService:
    def __init__(
        self,
        settings: Settings,
        keys: KeyProvider,
        feeds: list[Feed],
        metrics: OppositionMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.feeds = feeds
        self.metrics = metrics
        self.clock = clock
        self.producer: DurableProducer | None = None
        self.view: CompactedView | None = None
        self.headers: dict[str, bytes] = {}
        self.audit: AuditLog | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, with_view: bool = True) -> None:
        """Topics and schemas ready, producer up; ``with_view`` also reads the registry (for counts)."""
        s = self.settings
        await asyncio.to_thread(wait_for_kafka, s.kafka, 30)
        topics = sorted({t for feed in self.feeds for k, t in feed.topics().items() if k == "retraction"})
        specs = [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG), *(TopicSpec(t) for t in topics)]
        await asyncio.to_thread(ensure_topics, s.kafka, specs)
        self.headers = await asyncio.to_thread(national_headers, Registry(s.registry), self.feeds)
        self.producer = DurableProducer(s.kafka)
        self.audit = AuditLog(s, self.producer)
        await self.audit.start()
        if with_view:
            self.view = CompactedView(s.kafka, CONTROL_OPPOSITION, name="opposition-service")
            await asyncio.to_thread(self.view.start)

    async def stop(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.settings.kafka.delivery_timeout_ms / 1000 + 5)
        if self.view is not None:
            self.view.stop()
            self.view = None
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close)
            self.producer = None

    def _producer(self) -> DurableProducer:
        if self.producer is None:
            raise RuntimeError("OppositionService.start() was not awaited")
        return self.producer

    async def _audited(
        self, action: AuditAction, who: str, channel: AuditChannel, targets: list[str]
    ) -> None:
        """The ok entry, confirmed by Kafka, before the action; KafkaUnavailable when it cannot be."""
        if self.audit is None:
            raise KafkaUnavailable("the audit trail (control.audit) is not open: nothing was done")
        await self.audit.record(audit_entry(action, who, channel, targets))

    def refused(
        self,
        action: AuditAction,
        who: str,
        channel: AuditChannel,
        reason: AuditReason,
        targets: list[str] | None = None,
    ) -> None:
        """Record a refusal in the background (best effort: the answer does not wait for it)."""
        if self.audit is None:
            log.warning("audit trail not open: refusal of %s not recorded", action.value)
            return
        entry = audit_entry(action, who, channel, targets or [], AuditOutcome.REFUSED, reason)
        audit = self.audit

        async def write() -> None:
            try:
                await audit.record(entry)
            except KafkaUnavailable as exc:
                log.warning("audit entry for a refused %s not written: %s", action.value, exc)

        task = asyncio.get_running_loop().create_task(write())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def register(
        self,
        objection: Objection,
        registered_by: str,
        channel: AuditChannel = AuditChannel.HTTP,
        who: str | None = None,
    ) -> Registered:
        """The audit entry, then the registry entries, then the national retractions; raises
        KafkaUnavailable if any is not confirmed (the caller answers negatively and the requester
        registers again). ``who`` (default ``registered_by``) is the audit trail's caller."""
        producer = self._producer()
        entries = registry_entries(self.keys, objection)
        who = who or registered_by
        await self._audited(AuditAction.OPPOSITION_ADD, who, channel, entries)
        try:
            return await self._register(producer, objection, registered_by, entries)
        except KafkaUnavailable:
            self.refused(AuditAction.OPPOSITION_ADD, who, channel, AuditReason.KAFKA_UNAVAILABLE, entries)
            raise

    async def _register(
        self, producer: DurableProducer, objection: Objection, registered_by: str, entries: list[str]
    ) -> Registered:
        deliveries = await producer.send_all(
            [(CONTROL_OPPOSITION, OPPOSED, entry.encode("utf-8")) for entry in entries]
        )
        if self.view is not None:
            for entry in entries:
                self.view.remember(entry, OPPOSED)
        records = retraction_records(
            objection, self.clock(), registered_by, entries, [(d.partition, d.offset) for d in deliveries]
        )
        retractions = national_retractions(self.feeds, self.keys, self.headers, records)
        await producer.send_all([(r.topic, r.value, r.key) for r in retractions])
        for r in retractions:
            self.metrics.retractions.labels(r.destination, "OPPOSITION").inc()
        log.info(
            "objection registered by %s: %d entries, %d retractions",
            registered_by,
            len(entries),
            len(retractions),
        )
        return Registered(len(entries), len(retractions))

    async def withdraw(
        self,
        objection: Objection,
        withdrawn_by: str,
        channel: AuditChannel = AuditChannel.HTTP,
        who: str | None = None,
    ) -> int:
        """Tombstones for the objection's entries under every opposition key still kept (an entry may
        have been written before a rotation): new events flow again; what was retracted stays retracted.
        The audit entry is confirmed first, as for a registration."""
        entries = sorted(
            {
                entry
                for key in self.keys.all(OPPOSITION_KEYRING)
                for entry in registry_entries(self.keys, objection, key)
            }
        )
        producer = self._producer()
        who = who or withdrawn_by
        await self._audited(AuditAction.OPPOSITION_REMOVE, who, channel, entries)
        try:
            await producer.send_all([(CONTROL_OPPOSITION, None, e.encode("utf-8")) for e in entries])
        except KafkaUnavailable:
            self.refused(AuditAction.OPPOSITION_REMOVE, who, channel, AuditReason.KAFKA_UNAVAILABLE, entries)
            raise
        if self.view is not None:
            for entry in entries:
                self.view.remember(entry, None)
        log.info("objection withdrawn by %s: %d entries", withdrawn_by, len(entries))
        return len(entries)

    def count(self) -> int | None:
        return len(self.view) if self.view is not None else None
