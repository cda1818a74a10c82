"""The normalize stage without Kafka: one raw record in, encoded canonical records or one dead letter out.

This is the *transform* state between the raw topics and ``canonical.*``: decode the RawMessage (Avro,
registry), decode the payload's character set, call the pure mapper for its protocol, and encode what
comes back. The stage shell around it only moves bytes. Every input yields at least one output, so
nothing is lost silently: canonical events, or a dead letter in ``dlq.normalize`` with a precise reason —
or, for a partial mapping, both: the events, then one dead letter per part left out, marked
``outcome=partial`` so an operator can tell a part from a whole message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from affluent.core.errors import AffluentError, RegistryUnavailable
from affluent.core.metrics import Labelled, dead_letters, stage_latency
from affluent.core.topics import value_subject
from formats.hl7.charset import UnknownCharset, decode
from formats.reasons import ReasonCode
from schemas.catalog import DLQ_NORMALIZE
from schemas.deadletter import dead_letter_record
from schemas.registry import AvroCodec, Registry, load_schema
from schemas.registry import decode as decode_avro
from streams.contract import Output, dead_letter_output
from streams.normalize.envelope import RawContext
from streams.normalize.options import MappingOptions
from streams.normalize.result import CANONICAL_KINDS, CanonicalEvent, Rejection, run_mapper

Mapper = Callable[[Any, RawContext, MappingOptions], list[CanonicalEvent]]


class NormalizeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_in = Counter(
            "affluent_normalize_records_in", "Raw records read, by protocol", ["protocol"], registry=registry
        )
        self.records_out = Counter(
            "affluent_normalize_records_out",
            "Canonical records written, by kind",
            ["kind"],
            registry=registry,
        )
        self.dead_letters = dead_letters(registry)
        # A message mapped in part (its good events out, one part dead-lettered): the dead letter alone
        # would read as "this message was lost" on a dashboard, when most of it went through.
        self.partial = Counter(
            "affluent_normalize_partial",
            "Raw records mapped in part: their events written, a part left out as a dead letter, by reason",
            ["reason"],
            registry=registry,
        )
        self.latency = stage_latency(registry).labels("normalize")
        # Children of the per-record metrics, looked up once (see affluent.core.metrics.Labelled).
        self.records_in_of = Labelled(self.records_in)
        self.records_out_of = Labelled(self.records_out)


def canonical_topic(kind: str) -> str:
    return f"canonical.{kind}"


class Normalizer:
    def __init__(
        self,
        registry: Registry,
        options: MappingOptions,
        metrics: NormalizeMetrics,
        mappers: dict[str, Mapper],
        dlq_topic: str = DLQ_NORMALIZE,
    ) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        self.mappers = mappers
        self.dlq_topic = dlq_topic
        self.codecs = {
            kind: AvroCodec(
                registry, value_subject(canonical_topic(kind)), load_schema(f"canonical/{kind}"), "BACKWARD"
            )
            for kind in CANONICAL_KINDS
        }
        self.dlq_codec = AvroCodec(registry, value_subject(dlq_topic), load_schema("dead_letter"), "BACKWARD")

    def process(self, value: bytes | None, topic: str, partition: int, offset: int) -> list[Output]:
        """A record that cannot be read or mapped becomes a dead letter; the only exception is
        :class:`RegistryUnavailable`, which says nothing about the record (the caller retries it)."""
        started = time.perf_counter()
        try:
            return self._process(value, topic, partition, offset)
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)

    def _process(self, value: bytes | None, topic: str, partition: int, offset: int) -> list[Output]:
        lineage = {"topic": topic, "partition": partition, "offset": offset}
        if value is None:
            return [
                self._dead(Rejection(ReasonCode.EMPTY_RECORD, "raw record has no value"), None, lineage, None)
            ]
        try:
            raw = decode_avro(self.registry, value)
        except RegistryUnavailable:
            raise  # the record is fine, the registry is away: the shell waits and retries
        except AffluentError:
            return [
                self._dead(
                    Rejection(ReasonCode.UNDECODABLE_RAW, "raw record is not a registered RawMessage"),
                    None,
                    lineage,
                    value,
                )
            ]
        protocol = str(raw.get("protocol", ""))
        self.metrics.records_in_of(protocol if protocol in self.mappers else "other").inc()
        ctx = RawContext.from_raw(raw, topic, partition, offset)
        mapper = self.mappers.get(protocol)
        if mapper is None:
            return [
                self._dead(
                    Rejection(ReasonCode.UNSUPPORTED_PROTOCOL, "no mapper for this protocol"),
                    raw,
                    lineage,
                    None,
                )
            ]
        outcome = run_mapper(mapper, self._payload(raw, protocol), ctx, self.options)
        if isinstance(outcome, Rejection):
            return [self._dead(outcome, raw, lineage, None)]
        outputs: list[Output] = []
        for event in outcome:
            try:
                encoded = self.codecs[event.kind].encode(event.record)
            except (AffluentError, KeyError) as exc:
                reason = str(exc) if isinstance(exc, AffluentError) else f"unknown kind {event.kind}"
                return [
                    self._dead(
                        Rejection(ReasonCode.SCHEMA_MISMATCH, reason, rule="canonical schema"),
                        raw,
                        lineage,
                        None,
                    )
                ]
            outputs.append(Output(canonical_topic(event.kind), event.key.encode("utf-8"), encoded))
        for out in outputs:
            self.metrics.records_out_of(out.topic.removeprefix("canonical.")).inc()
        partial = {"outcome": "partial", "events": str(len(outputs))}
        for dropped in outcome.dropped:
            self.metrics.partial.labels(dropped.reason_code).inc()
            outputs.append(self._dead(dropped, raw, lineage, None, partial))
        return outputs

    def _payload(self, raw: dict[str, Any], protocol: str) -> Any:
        """HL7 text is decoded per MSH-18 here (mappers get str); FHIR and device JSON stay bytes."""
        payload: bytes = raw["payload"]
        if protocol != "hl7v2":
            return payload
        try:
            return decode(payload).text
        except UnknownCharset:
            return payload.decode("latin-1")

    def _dead(
        self,
        rejection: Rejection,
        raw: dict[str, Any] | None,
        lineage: dict[str, Any],
        undecodable: bytes | None,
        extra: dict[str, str] | None = None,
    ) -> Output:
        self.metrics.dead_letters.labels("normalize", rejection.reason_code).inc()
        record = dead_letter_record(
            stage="normalize",
            reason_code=rejection.reason_code,
            reason=rejection.reason,
            location=rejection.location,
            rule=rejection.rule,
            payload=raw["payload"] if raw else undecodable,
            content_type=raw["content_type"] if raw else "avro/binary",
            source_facility=raw["source_facility"] if raw else "",
            source_application=raw["source_application"] if raw else "",
            connector=raw["connector"] if raw else "",
            protocol=raw["protocol"] if raw else "",
            raw_id=raw["raw_id"] if raw else None,
            lineage=lineage,
            attributes={"message_type": str(raw.get("message_type") or ""), **(extra or {})} if raw else {},
        )
        return dead_letter_output(self.dlq_codec, self.dlq_topic, record)
