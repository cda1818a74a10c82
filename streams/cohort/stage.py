"""The cohort stage around :func:`streams.cohort.state.step`: decode, step, say where each record goes.

Engine-free, so the Faust agent (``worker.py``) stays a shell and tests can drive the stage without a
broker: :meth:`CohortStage.process` takes a patient's table value and one canonical record and returns
the new table value and the records to send. A record that cannot be decoded is a dead letter, as in
the other stages; it never changes the patient's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from affluent.core.errors import AffluentError, RegistryUnavailable
from affluent.core.topics import value_subject
from formats.reasons import ReasonCode
from schemas.catalog import DLQ_COHORT, cohort_topic, cohort_topics_of
from schemas.deadletter import dead_letter_record
from schemas.registry import AvroCodec, Registry, load_schema
from schemas.registry import decode as decode_avro
from streams.cohort.definition import Cohort
from streams.cohort.state import Limits, PatientState, step

STAGE = "cohort"


def cohort_topics(cohorts: Mapping[str, Cohort]) -> list[str]:
    """Every cohort topic the stage may write, for the destinations the cohorts feed."""
    return cohort_topics_of(sorted({d for c in cohorts.values() for d in c.destinations}))


@dataclass(frozen=True, slots=True)
class Send:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Result:
    state: bytes | None  # the patient's new table value; None: unchanged
    sends: list[Send] = field(default_factory=list)


class CohortMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "affluent_cohort_records_total",
            "Canonical records the cohort stage read",
            ["kind"],
            registry=registry,
        )
        self.forwarded = Counter(
            "affluent_cohort_forwarded_total",
            "Records sent to a cohort-scoped destination (released: held until the patient joined)",
            ["destination", "released"],
            registry=registry,
        )
        self.joined = Counter(
            "affluent_cohort_joined_total", "Patients who entered a cohort", ["cohort"], registry=registry
        )
        self.left = Counter(
            "affluent_cohort_left_total",
            "Patients who left a cohort (exit rule)",
            ["cohort"],
            registry=registry,
        )
        self.evicted = Counter(
            "affluent_cohort_evicted_total",
            "Held events dropped by the per-patient bounds or the look-back",
            registry=registry,
        )
        self.held_bytes = Gauge(
            "affluent_cohort_held_bytes",
            "Bytes held for the patient of the last record read",
            registry=registry,
        )
        self.dead_letters = Counter(
            "affluent_cohort_dead_letters_total",
            "Records the cohort stage could not read",
            ["reason"],
            registry=registry,
        )


class CohortStage:
    def __init__(
        self, registry: Registry, cohorts: Mapping[str, Cohort], limits: Limits, metrics: CohortMetrics
    ) -> None:
        self.registry = registry
        self.cohorts = dict(cohorts)
        self.limits = limits
        self.metrics = metrics
        self.dlq_codec = AvroCodec(
            registry, value_subject(DLQ_COHORT), load_schema("dead_letter"), "BACKWARD"
        )

    def process(
        self,
        state: bytes | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> Result:
        """The patient's new table value and what to send, for one canonical record at (topic, partition,
        offset); ``state`` is the patient's table value (None: never seen)."""
        kind = topic.removeprefix("canonical.")
        where = {"topic": topic, "partition": partition, "offset": offset}
        if value is None:
            return self._dead(ReasonCode.EMPTY_RECORD, "canonical record has no value", key, where)
        try:
            record = decode_avro(self.registry, value)
        except RegistryUnavailable:
            raise  # the record is fine, the registry is away: the shell retries
        except AffluentError:
            return self._dead(
                ReasonCode.UNDECODABLE_CANONICAL, "not a registered canonical record", key, where
            )
        envelope = record.get("envelope")
        if not isinstance(envelope, Mapping) or not envelope.get("event_id"):
            return self._dead(ReasonCode.NOT_CANONICAL, "record has no envelope", key, where)
        self.metrics.records.labels(kind).inc()
        patient = PatientState.from_bytes(state)
        moved = step(patient, kind, record, value, self.cohorts, self.limits)
        out = Result(patient.to_bytes())
        for forward in moved.forward:
            out.sends.append(Send(cohort_topic(forward.destination, forward.kind), key, forward.value))
            self.metrics.forwarded.labels(forward.destination, "yes" if forward.released else "no").inc()
        for joined in moved.joined:
            self.metrics.joined.labels(joined.membership.cohort).inc()
        for name in moved.left:
            self.metrics.left.labels(name).inc()
        self.metrics.evicted.inc(moved.evicted)
        self.metrics.held_bytes.set(patient.held_bytes)
        return out

    def _dead(self, code: ReasonCode, reason: str, key: bytes | None, where: dict[str, object]) -> Result:
        self.metrics.dead_letters.labels(code).inc()
        letter = dead_letter_record(
            stage=STAGE,
            reason_code=code,
            reason=reason,
            content_type="avro/binary",
            source_facility="",
            lineage=where,
        )
        return Result(None, [Send(DLQ_COHORT, key, self.dlq_codec.encode(letter))])
