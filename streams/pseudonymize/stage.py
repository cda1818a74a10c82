"""The pseudonymize stage without Kafka: one canonical record in, national records or one dead letter out.

This is the step between ``canonical.<kind>`` and ``national.<destination>.<kind>.v1`` (design §6):
decode the canonical record (registry), drop it when the patient objected (an OPPOSITION retraction
still passes: it tells the platforms to delete), and for each destination that takes the kind, apply
the destination's policy and frame the Avro body with the id of the national schema registered at
start. The stage shell around it (streams/app.py) only moves bytes.

Nothing here logs or reports content: dead-letter reasons are the content-free texts of
:class:`TransformError`, metrics carry destinations, kinds and key ids only.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from affluent.core.errors import AffluentError, RegistryUnavailable
from affluent.core.metrics import Labelled, dead_letters, retractions, stage_latency
from affluent.core.topics import value_subject
from formats.reasons import ReasonCode
from schemas.catalog import DLQ_PSEUDONYMIZE, NATIONAL_COMPATIBILITY, split_cohort_topic
from schemas.deadletter import dead_letter_record
from schemas.registry import MAGIC_BYTE, AvroCodec, Registry, load_schema
from schemas.registry import decode as decode_avro
from streams.contract import Output, dead_letter_output
from streams.pseudonymize.keys import KeyProvider
from streams.pseudonymize.opposition import OppositionLookup, withheld
from streams.pseudonymize.pseudonym import IdentityMissing
from streams.pseudonymize.transform import Feed, TransformError

STAGE = "pseudonymize"
CANONICAL_PREFIX = "canonical."
_HEADER = struct.Struct(">bI")


def national_headers(registry: Registry, feeds: Sequence[Feed]) -> dict[str, bytes]:
    """Register every national schema the feeds emit (FULL_TRANSITIVE) and return, per topic, the
    Confluent wire-format header (magic byte + schema id) to put in front of its Avro bodies."""
    headers: dict[str, bytes] = {}
    for feed in feeds:
        for kind, topic in feed.topics().items():
            schema_id = registry.register(
                value_subject(topic), feed.schema_text(kind), NATIONAL_COMPATIBILITY
            )
            headers[topic] = _HEADER.pack(MAGIC_BYTE, schema_id)
    return headers


class PseudonymizeMetrics:
    """The stage's metrics; the dead-letter counter and stage latency are shared per registry
    (:mod:`affluent.core.metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_in = Counter(
            "affluent_pseudonymize_records_in",
            "Canonical records read by the pseudonymize stage, by kind",
            ["kind"],
            registry=registry,
        )
        self.national_records = Counter(
            "affluent_national_records",
            "National records produced, by destination and kind",
            ["destination", "kind"],
            registry=registry,
        )
        self.opposition_drops = Counter(
            "affluent_opposition_drops",
            "Records not sent to a destination because the patient objected",
            ["destination"],
            registry=registry,
        )
        self.dead_letters = dead_letters(registry)
        self.retractions = retractions(registry)
        self.key_info = Gauge(
            "affluent_pseudonym_key_info",
            "1 for the pseudonymization key in use per destination (the key id, never the secret)",
            ["destination", "key_id"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "affluent_end_to_end_latency_seconds",
            "From reception at the door (envelope.ingest_time) to the national record, by source door "
            "(connector) and destination",
            ["source", "destination"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.latency = stage_latency(registry).labels(STAGE)
        # Children of the per-record metrics, looked up once (see affluent.core.metrics.Labelled).
        self.records_in_of = Labelled(self.records_in)
        self.national_records_of = Labelled(self.national_records)
        self.end_to_end_of = Labelled(self.end_to_end)
        # Set by the worker to read the opposition view's size at scrape time.
        self.opposition_entries = Gauge(
            "affluent_opposition_entries",
            "Entries in the opposition registry (keyed hashes)",
            registry=registry,
        )


class Pseudonymizer:
    def __init__(
        self,
        registry: Registry,
        feeds: Sequence[Feed],
        opposition_lookup: OppositionLookup,
        keys: KeyProvider,
        metrics: PseudonymizeMetrics,
        dlq_topic: str = DLQ_PSEUDONYMIZE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        scoped: frozenset[str] = frozenset(),
    ) -> None:
        self.registry = registry
        self.feeds = tuple(feeds)
        # Cohort-scoped destinations take their records from cohort.<destination>.* (members only),
        # every other destination from canonical.* (streams/cohort: who is in a cohort).
        self.scoped = scoped
        self._open_feeds = tuple(f for f in self.feeds if f.destination not in scoped)
        self.opposition = opposition_lookup
        self.keys = keys
        self.metrics = metrics
        self.dlq_topic = dlq_topic
        self.clock = clock
        # topic → Confluent header of its national schema; registering fails the start, not a record.
        self.headers = national_headers(registry, self.feeds)
        for feed in self.feeds:
            key = keys.current(feed.policy.key_name)
            metrics.key_info.labels(feed.destination, key.key_id).set(1)
        self.dlq_codec = AvroCodec(registry, value_subject(dlq_topic), load_schema("dead_letter"), "BACKWARD")

    def process(self, value: bytes | None, topic: str, partition: int, offset: int) -> list[Output]:
        """A record that cannot be read or transformed becomes a dead letter; the only exception is
        :class:`RegistryUnavailable`, which says nothing about the record (the caller retries it)."""
        started = time.perf_counter()
        try:
            return self._process(value, topic, partition, offset)
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)

    def _process(self, value: bytes | None, topic: str, partition: int, offset: int) -> list[Output]:
        lineage = {"topic": topic, "partition": partition, "offset": offset}
        cohort = split_cohort_topic(topic)
        if cohort is None:
            kind, feeds = topic.removeprefix(CANONICAL_PREFIX), self._open_feeds
        else:
            kind = cohort[1]
            feeds = tuple(f for f in self.feeds if f.destination == cohort[0] and cohort[0] in self.scoped)
        if value is None:
            return [self._dead(ReasonCode.EMPTY_RECORD, "canonical record has no value", None, lineage)]
        try:
            record = decode_avro(self.registry, value)
        except RegistryUnavailable:
            raise  # the record is fine, the registry is away: the shell waits and retries
        except AffluentError:
            return [
                self._dead(
                    ReasonCode.UNDECODABLE_CANONICAL, "not a registered canonical record", None, lineage
                )
            ]
        self.metrics.records_in_of(kind).inc()
        envelope = record.get("envelope")
        if not isinstance(envelope, Mapping) or not isinstance(record.get("patient"), Mapping):
            return [self._dead(ReasonCode.NOT_CANONICAL, "record has no envelope or patient", None, lineage)]
        try:
            dropped = withheld(kind, record, self.opposition, self.keys)
        except IdentityMissing as exc:  # content-free by construction
            return [self._dead(ReasonCode.IDENTITY_MISSING, str(exc), record, lineage)]
        if dropped:
            for feed in feeds:
                if self._takes(feed, kind, record):
                    self.metrics.opposition_drops.labels(feed.destination).inc()
            return []
        return self.transform(kind, record, lineage, feeds)

    def transform(
        self,
        kind: str,
        record: Mapping[str, Any],
        lineage: dict[str, Any],
        feeds: Sequence[Feed] | None = None,
    ) -> list[Output]:
        """The national form of one decoded canonical record for ``feeds`` (default: every destination;
        no opposition check: the caller decides). Also used by the opposition service for the
        Retraction an objection emits, which every destination receives."""
        envelope: Mapping[str, Any] = record["envelope"]
        outputs: list[Output] = []
        produced: list[tuple[str, str]] = []
        for feed in self.feeds if feeds is None else feeds:
            try:
                national = feed.apply(kind, record)
                if national is None:
                    continue
                body = feed.encode(national)
            except TransformError as exc:
                return [self._dead(ReasonCode.NATIONAL_TRANSFORM, str(exc), record, lineage)]
            except AffluentError as exc:  # SchemaError from the encoder: names schema and field only
                return [self._dead(ReasonCode.NATIONAL_SCHEMA, str(exc), record, lineage)]
            header = self.headers.get(national.topic)
            if header is None:
                return [
                    self._dead(
                        ReasonCode.NATIONAL_SCHEMA,
                        f"no registered schema for {national.topic}",
                        record,
                        lineage,
                    )
                ]
            outputs.append(Output(national.topic, national.key.encode("utf-8"), header + body))
            produced.append((feed.destination, national.kind))
        source = str(envelope.get("source", {}).get("connector") or "unknown")
        ingest = envelope.get("ingest_time")
        age = (self.clock() - ingest).total_seconds() if isinstance(ingest, datetime) else None
        for destination, national_kind in produced:
            self.metrics.national_records_of(destination, national_kind).inc()
            if national_kind == "retraction":
                self.metrics.retractions.labels(destination, str(record.get("kind") or "unknown")).inc()
            if age is not None:
                self.metrics.end_to_end_of(source, destination).observe(max(0.0, age))
        return outputs

    @staticmethod
    def _takes(feed: Feed, kind: str, record: Mapping[str, Any]) -> bool:
        policy = feed.policy
        if not policy.sends(kind):
            return False
        return not policy.select or bool(policy.selects(kind, record))

    def _dead(
        self, reason_code: ReasonCode, reason: str, record: Mapping[str, Any] | None, lineage: dict[str, Any]
    ) -> Output:
        """A dead letter naming the failure; the canonical content stays out of the reason (and the
        canonical value is not copied into the dead letter either: replay from the canonical topic with
        the lineage)."""
        self.metrics.dead_letters.labels(STAGE, reason_code).inc()
        envelope: Mapping[str, Any] = (record or {}).get("envelope") or {}
        source: Mapping[str, Any] = envelope.get("source") or {}
        envelope_lineage: Mapping[str, Any] = envelope.get("lineage") or {}
        dead = dead_letter_record(
            stage=STAGE,
            reason_code=reason_code,
            reason=reason,
            content_type="avro/binary",
            source_facility=str(source.get("facility") or ""),
            source_application=str(source.get("application") or ""),
            connector=str(source.get("connector") or ""),
            protocol=str(source.get("protocol") or ""),
            raw_id=str(envelope_lineage["raw_id"]) if envelope_lineage.get("raw_id") else None,
            event_id=str(envelope["event_id"]) if envelope.get("event_id") else None,
            lineage=lineage,
        )
        return dead_letter_output(self.dlq_codec, self.dlq_topic, dead)
