"""Registering and withdrawing objections against the real topics; shared by the CLI and the HTTP endpoint.

Order of writes for a registration, each confirmed by Kafka (``acks=all``) before the next:

1. the registry entries (keyed hashes) in ``control.opposition`` — from then on every pseudonymize
   worker drops the patient's events as soon as its view of the registry has the entry (a worker
   tails the registry; the lag is one poll);
2. the OPPOSITION retractions on ``national.<destination>.retraction.v1``, one per identity form and
   kept key, keyed by the pseudonym they name — so the platform deletes what it already holds.

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
from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.limits import refused_connections
from affluent.core.metrics import retractions
from affluent.core.producer import DurableProducer
from affluent.core.settings import Settings
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
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

    async def start(self, with_view: bool = True) -> None:
        """Topics and schemas ready, producer up; ``with_view`` also reads the registry (for counts)."""
        s = self.settings
        await asyncio.to_thread(wait_for_kafka, s.kafka, 30)
        topics = sorted({t for feed in self.feeds for k, t in feed.topics().items() if k == "retraction"})
        specs = [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG), *(TopicSpec(t) for t in topics)]
        await asyncio.to_thread(ensure_topics, s.kafka, specs)
        self.headers = await asyncio.to_thread(national_headers, Registry(s.registry), self.feeds)
        self.producer = DurableProducer(s.kafka)
        if with_view:
            self.view = CompactedView(s.kafka, CONTROL_OPPOSITION, name="opposition-service")
            await asyncio.to_thread(self.view.start)

    async def stop(self) -> None:
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

    async def register(self, objection: Objection, registered_by: str) -> Registered:
        """Entries first, then the national retractions; raises KafkaUnavailable if either is not
        confirmed (the caller answers negatively and the requester registers again)."""
        producer = self._producer()
        entries = registry_entries(self.keys, objection)
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

    async def withdraw(self, objection: Objection, withdrawn_by: str) -> int:
        """Tombstones for the objection's entries under every opposition key still kept (an entry may
        have been written before a rotation): new events flow again; what was retracted stays retracted."""
        entries = sorted(
            {
                entry
                for key in self.keys.all(OPPOSITION_KEYRING)
                for entry in registry_entries(self.keys, objection, key)
            }
        )
        await self._producer().send_all([(CONTROL_OPPOSITION, None, e.encode("utf-8")) for e in entries])
        if self.view is not None:
            for entry in entries:
                self.view.remember(entry, None)
        log.info("objection withdrawn by %s: %d entries", withdrawn_by, len(entries))
        return len(entries)

    def count(self) -> int | None:
        return len(self.view) if self.view is not None else None
