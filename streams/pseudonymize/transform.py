"""One canonical record in, one national record (or nothing) out: the pure core of the national feed.

The stage worker around it decodes ``canonical.<kind>`` values, filters objecting patients
(:func:`streams.pseudonymize.pseudonym.is_opposed`), calls :meth:`Feed.apply` and encodes the result with
the national schema of ``NationalRecord.topic``, keyed by ``NationalRecord.key``. Everything here is
deterministic — same record, same key → same bytes — so at-least-once redelivery collapses on the
national ``event_id``.

A failure is a :class:`TransformError` naming destination, kind and the failing field path, with the
exception *type* only: the text of a ``KeyError`` or ``ValueError`` raised inside an operation may hold
the very value being pseudonymized. The error is raised outside the ``except`` block, so the original
exception is not even chained to it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from affluent.core.errors import AffluentError, ConfigError, SchemaError
from schemas.fastwriter import NotCompilable, compile_writer
from schemas.registry import load_schema, parse_schema
from streams.normalize.result import CANONICAL_KINDS
from streams.pseudonymize.keys import KeyProvider, require_key
from streams.pseudonymize.methods import RecordContext
from streams.pseudonymize.policy import Policy, derive_schema, locate_failure, schema_shape
from streams.pseudonymize.pseudonym import IdentityMissing, PatientIdentity, patient_identity


class TransformError(AffluentError):
    """A canonical record the policy cannot turn into a national one; content-free, for the DLQ reason."""

    def __init__(self, destination: str, kind: str, path: str, problem: str) -> None:
        self.destination, self.kind, self.path, self.problem = destination, kind, path, problem
        super().__init__(f"national {destination}/{kind}: field {path or '<record>'}: {problem}")


@dataclass(frozen=True, slots=True)
class NationalRecord:
    """What to produce: ``record`` (fits the schema of ``topic``) keyed by ``key``, the patient pseudonym."""

    topic: str
    key: str
    record: dict[str, Any]
    kind: str
    linkable: bool


def apply(
    policy: Policy, keys: KeyProvider, kind: str, canonical_record: Mapping[str, Any]
) -> NationalRecord | None:
    """The national form of one canonical record, or None when the destination does not take it (its kind
    is not sent, or the policy's ``select`` leaves it out)."""
    plan = policy.plans.get(kind)
    if plan is None:
        if kind not in CANONICAL_KINDS:
            raise TransformError(policy.destination, kind, "", "not a canonical kind")
        return None
    if policy.select and not policy.selects(kind, canonical_record):
        return None
    key = keys.current(policy.key_name)
    failure = ""
    identity: PatientIdentity | None = None
    out: dict[str, Any] = {}
    try:
        patient_ref = canonical_record["patient"]
        identity = patient_identity(patient_ref)
        ctx = RecordContext(key, identity, canonical_record["envelope"], policy.max_shift_days, patient_ref)
        out = plan.build(canonical_record, ctx)
    except IdentityMissing as exc:
        failure = str(exc)  # written content-free on purpose
    except Exception as exc:
        failure = type(exc).__name__
    if failure:
        raise TransformError(
            policy.destination, kind, _where(policy, kind, canonical_record, identity, key), failure
        )
    patient = out["patient"]
    return NationalRecord(plan.topic, patient["pseudonym"], out, kind, patient["linkable"])


def _where(
    policy: Policy, kind: str, record: Mapping[str, Any], identity: PatientIdentity | None, key: Any
) -> str:
    if identity is None or not isinstance(record, Mapping) or not isinstance(record.get("envelope"), Mapping):
        return "patient" if isinstance(record, Mapping) and "envelope" in record else "envelope"
    ctx = RecordContext(key, identity, record["envelope"], policy.max_shift_days)
    return locate_failure(policy.plans[kind].root, record, ctx)


# ------------------------------------------------------------------ encoding


class NationalEncoder:
    """Avro binary body (no Confluent header) of national records of one schema.

    The compiled encoder does the work; if it fails on a record (a value of an unexpected type),
    fastavro encodes it instead — it accepts more and, when it refuses too, says which field. Errors
    name the schema and field, never a value.
    """

    def __init__(self, schema_text: str) -> None:
        self.schema_json = json.loads(schema_text)
        self.schema_name = str(self.schema_json.get("name", "?"))
        self.parsed = parse_schema(schema_text)
        self._fast: Callable[[Mapping[str, Any]], bytes] | None
        try:
            self._fast = compile_writer(self.schema_json)
        except NotCompilable:
            self._fast = None

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if self._fast is not None:
            try:
                return self._fast(record)
            except Exception:  # noqa: S110 - fastavro below decides, and reports precisely
                pass
        problem = ""
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, self.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            problem = _field_hint(exc)
        if problem:
            raise SchemaError(f"national record does not fit schema {self.schema_name}: {problem}")
        return buf.getvalue()


def _field_hint(exc: Exception) -> str:
    """The field fastavro names, without the value it quotes (which may be personal data)."""
    text = str(exc)
    if isinstance(exc, KeyError):
        return "missing or unknown value"
    if text.startswith("no value and no default for "):
        return f"missing field {text.rsplit(' ', 1)[-1]}"
    for marker in ("on field ", "field "):
        if marker in text:
            name = text.split(marker, 1)[1].split()[0].strip("'\"`,:")
            return f"bad value for field {name}"
    return type(exc).__name__


class Feed:
    """A policy bound to its key provider, checked to have a key before the first record arrives.

    This is what the agent builds at start-up: a destination without a key stops the worker with an error
    naming the destination, rather than publishing nothing (or worse) later.
    """

    def __init__(self, policy: Policy, keys: KeyProvider) -> None:
        require_key(keys, policy.key_name)
        self.policy = policy
        self.keys = keys
        self._schemas = {kind: self._checked_schema(kind) for kind in policy.plans}
        self._encoders = {kind: NationalEncoder(text) for kind, text in self._schemas.items()}

    def _checked_schema(self, kind: str) -> str:
        """The shipped schema of the kind, refused if it is not what the policy emits.

        A policy edited without its schema (or the reverse) would otherwise fail on every record, or
        silently send less than the policy says; better to stop at start-up and say which one. A policy
        with no shipped schema at all (a destination being drafted) uses the schema it implies.
        """
        derived = derive_schema(self.policy, kind)
        try:
            text = load_schema(self.policy.schema_name_for(kind))
        except SchemaError:
            return json.dumps(derived, ensure_ascii=False)
        if schema_shape(json.loads(text)) != schema_shape(derived):
            raise ConfigError(
                f"policy {self.policy.source}: {kind}: the national schema "
                f"{self.policy.schema_name_for(kind)}.avsc is not what the policy emits; "
                "regenerate it from the policy (docs/pseudonymization.md, National schemas)"
            )
        return text

    @property
    def destination(self) -> str:
        return self.policy.destination

    def sends(self, kind: str) -> bool:
        return self.policy.sends(kind)

    def topics(self) -> dict[str, str]:
        """kind → national topic, for the agent to declare its outputs."""
        return {kind: plan.topic for kind, plan in self.policy.plans.items()}

    def schema_text(self, kind: str) -> str:
        """The national schema of the kind (the shipped ``.avsc``: what the codec registers)."""
        return self._schemas[kind]

    def apply(self, kind: str, canonical_record: Mapping[str, Any]) -> NationalRecord | None:
        return apply(self.policy, self.keys, kind, canonical_record)

    def encode(self, national: NationalRecord) -> bytes:
        """The Avro body of a national record (the codec's Confluent header goes in front of it)."""
        return self._encoders[national.kind].encode(national.record)

    def __repr__(self) -> str:
        return f"Feed({self.policy.destination}, kinds={list(self.policy.plans)})"


def build_feed(policy: Policy, keys: KeyProvider) -> Feed:
    return Feed(policy, keys)
