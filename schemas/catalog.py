"""Which Avro schema goes with which topic, and how strictly the registry guards it (design §4).

One list drives registration, the compatibility gate of CI and the subjects producers write to, so a
topic cannot be fed a schema the registry was never told to guard, and a breaking change to a ``.avsc``
file fails before any producer meets it. Subjects follow TopicNameStrategy (``<topic>-value``).

National schemas will be added as more entries (``national.<destination>.<type>.v<N>`` with a
``schema_name`` such as ``national/hdh/observation_v1``); :func:`compatibility_for` already gives them
FULL_TRANSITIVE, because an external platform may read any version ever published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from affluent.core.errors import RegistryError, RegistryUnavailable, SchemaError
from affluent.core.topics import (
    CONTROL_AUDIT,
    DLQ_INGEST,
    INGEST_DEVICE_RAW,
    INGEST_FHIR_RAW,
    INGEST_HL7V2_RAW,
    value_subject,
)
from schemas.registry import Registry, load_schema, parse_schema

# Canonical topics: identified, hospital-internal, keyed by the hospital patient key.
CANONICAL_PATIENT = "canonical.patient"
CANONICAL_ENCOUNTER = "canonical.encounter"
CANONICAL_OBSERVATION = "canonical.observation"
CANONICAL_CONDITION = "canonical.condition"
CANONICAL_PROCEDURE = "canonical.procedure"
CANONICAL_DIAGNOSTIC_REPORT = "canonical.diagnostic_report"
CANONICAL_RETRACTION = "canonical.retraction"
CANONICAL_TOPICS: tuple[str, ...] = (
    CANONICAL_PATIENT,
    CANONICAL_ENCOUNTER,
    CANONICAL_OBSERVATION,
    CANONICAL_CONDITION,
    CANONICAL_PROCEDURE,
    CANONICAL_DIAGNOSTIC_REPORT,
    CANONICAL_RETRACTION,
)

# Cohort topics: a cohort-scoped destination's canonical records, for its cohorts' members only (written by
# the cohort stage, same bytes as canonical.*; identified, hospital-internal, never mirrored).
COHORT_PREFIX = "cohort."


def cohort_topic(destination: str, kind: str) -> str:
    """``cohort.<destination>.<kind>``: what the pseudonymize stage reads for a cohort-scoped destination."""
    return f"{COHORT_PREFIX}{destination}.{kind}"


def cohort_topics_of(destinations: Sequence[str]) -> list[str]:
    kinds = [t.removeprefix("canonical.") for t in CANONICAL_TOPICS]
    return [cohort_topic(d, k) for d in sorted(destinations) for k in kinds]


def split_cohort_topic(topic: str) -> tuple[str, str] | None:
    """(destination, kind) of a cohort topic; None for any other topic."""
    if not topic.startswith(COHORT_PREFIX):
        return None
    destination, _, kind = topic.removeprefix(COHORT_PREFIX).partition(".")
    return (destination, kind) if destination and kind else None


DLQ_NORMALIZE = "dlq.normalize"
DLQ_COHORT = "dlq.cohort"
DLQ_PSEUDONYMIZE = "dlq.pseudonymize"

# National topics (design §4): pseudonymized, keyed by the patient pseudonym, one per destination and kind.
# The kinds follow each destination's policy (streams/pseudonymize/policies/<destination>.yaml), and each
# schema holds exactly what that policy emits (a unit test derives it from the policy and compares).
NATIONAL_HDH_KINDS: tuple[str, ...] = tuple(topic.removeprefix("canonical.") for topic in CANONICAL_TOPICS)
NATIONAL_INCA_KINDS: tuple[str, ...] = (
    "patient",
    "condition",
    "procedure",
    "observation",
    "diagnostic_report",
    "retraction",
)
NATIONAL_KINDS: dict[str, tuple[str, ...]] = {"hdh": NATIONAL_HDH_KINDS, "inca": NATIONAL_INCA_KINDS}
NATIONAL_TOPICS: tuple[str, ...] = tuple(
    f"national.{destination}.{kind}.v1" for destination, kinds in NATIONAL_KINDS.items() for kind in kinds
)

NATIONAL_PREFIX = "national."
NATIONAL_COMPATIBILITY = "FULL_TRANSITIVE"
DEFAULT_COMPATIBILITY = "BACKWARD"


# (topic, schema name under schemas/avro without ".avsc"), in the order they should be registered.
_TOPIC_SCHEMAS: tuple[tuple[str, str], ...] = (
    (INGEST_HL7V2_RAW, "raw_message"),
    (INGEST_FHIR_RAW, "raw_message"),
    (INGEST_DEVICE_RAW, "raw_message"),
    *((topic, f"canonical/{topic.removeprefix('canonical.')}") for topic in CANONICAL_TOPICS),
    (DLQ_INGEST, "dead_letter"),
    (DLQ_NORMALIZE, "dead_letter"),
    (DLQ_PSEUDONYMIZE, "dead_letter"),
    (CONTROL_AUDIT, "audit_entry"),
    *(
        (f"national.{destination}.{kind}.v1", f"national/{destination}/{kind}_v1")
        for destination, kinds in NATIONAL_KINDS.items()
        for kind in kinds
    ),
)


def compatibility_for(topic: str) -> str:
    """National consumers may replay any version they ever received, hospital-internal ones only the latest.

    So national subjects must stay readable both ways across all versions; internal subjects only need
    new readers to read old data, which leaves room to evolve the canonical model quickly.
    """
    return NATIONAL_COMPATIBILITY if topic.startswith(NATIONAL_PREFIX) else DEFAULT_COMPATIBILITY


@dataclass(frozen=True)
class SchemaEntry:
    topic: str
    subject: str
    schema_name: str  # path under schemas/avro without ".avsc", e.g. "canonical/observation"
    compatibility: str  # FULL_TRANSITIVE for national.* subjects, BACKWARD otherwise

    @classmethod
    def for_topic(cls, topic: str, schema_name: str) -> SchemaEntry:
        """Derive subject and compatibility from the topic so the naming and the rule cannot drift apart."""
        return cls(topic, value_subject(topic), schema_name, compatibility_for(topic))


def catalog() -> list[SchemaEntry]:
    return [SchemaEntry.for_topic(topic, name) for topic, name in _TOPIC_SCHEMAS]


def entry_for(topic: str) -> SchemaEntry:
    """The catalog entry of a topic; producers look their subject and schema up here, never spell them."""
    for entry in catalog():
        if entry.topic == topic:
            return entry
    raise SchemaError(f"topic {topic} has no schema in the catalog")


def schema_text(entry: SchemaEntry) -> str:
    return load_schema(entry.schema_name)


def register_all(
    registry: Registry, entries: Sequence[SchemaEntry] | None = None
) -> list[tuple[SchemaEntry, int]]:
    """Pin each subject's compatibility, then register its schema; running it again changes nothing.

    Every text is parsed before the registry is touched, so a broken file registers nothing rather than
    half of the catalog.
    """
    entries = catalog() if entries is None else list(entries)
    texts = [schema_text(entry) for entry in entries]
    for entry, text in zip(entries, texts, strict=True):
        try:
            parse_schema(text)
        except SchemaError as exc:
            raise SchemaError(f"schema {entry.schema_name} for {entry.subject}: {exc}") from None
    return [
        (entry, registry.register(entry.subject, text, entry.compatibility))
        for entry, text in zip(entries, texts, strict=True)
    ]


@dataclass
class CheckResult:
    entry: SchemaEntry
    ok: bool
    detail: str


def check_all(
    registry: Registry,
    entries: Sequence[SchemaEntry] | None = None,
    text_for: Callable[[SchemaEntry], str] = schema_text,
) -> list[CheckResult]:
    """Would the registry accept each repository schema as the next version of its subject?

    This is the CI gate: it asks the registry what registration would answer, without registering.
    A subject whose compatibility level differs from the catalog's is reported too, because a weaker
    level (the registry default is NONE) would let a breaking change through unnoticed.
    ``text_for`` lets a caller check a candidate schema without writing it to the package.
    """
    entries = catalog() if entries is None else list(entries)
    results: list[CheckResult] = []
    for entry in entries:
        try:
            text = text_for(entry)
            parse_schema(text)
        except SchemaError as exc:
            results.append(CheckResult(entry, False, str(exc)))
            continue
        try:
            registered = registry.has_subject(entry.subject)
        except RegistryUnavailable:
            raise  # the registry being away says nothing about this schema
        except RegistryError as exc:
            results.append(CheckResult(entry, False, str(exc)))
            continue
        if not registered:
            results.append(CheckResult(entry, True, "not registered yet"))
            continue
        level = registry.get_compatibility(entry.subject)
        try:
            compatible = _would_accept(registry, entry.subject, text, level)
        except RegistryError as exc:
            results.append(CheckResult(entry, False, str(exc)))
            continue
        shown = level or "the registry's global default"
        if not compatible:
            results.append(
                CheckResult(entry, False, f"incompatible with the versions registered under {shown}")
            )
        elif level != entry.compatibility:
            results.append(
                CheckResult(
                    entry,
                    False,
                    f"compatible, but the subject is guarded by {shown} instead of {entry.compatibility}; "
                    "register the catalog to pin it",
                )
            )
        else:
            results.append(CheckResult(entry, True, f"compatible ({level})"))
    return results


def _would_accept(registry: Registry, subject: str, text: str, level: str | None) -> bool:
    """Ask the question registration will ask, with the subject's own transitivity.

    ``Registry.is_compatible`` tests against the latest version only, which misses a break with an older
    version under a *_TRANSITIVE level; the all-versions endpoint checks every version whatever the
    level (Apicurio), which would be stricter than registration for BACKWARD. So pick by level.
    """
    if level is None or not level.endswith("_TRANSITIVE"):
        return registry.is_compatible(subject, text)
    try:
        return bool(registry.client.test_compatibility_all_versions(subject, Schema(text, "AVRO")))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            return True
        raise RegistryError(f"compatibility check of {subject} failed: {exc.error_message}") from None
    except Exception as exc:  # transport errors differ between client versions
        raise RegistryError(f"schema registry at {registry.url} unreachable: {type(exc).__name__}") from None
