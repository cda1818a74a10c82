"""The de-identification methods a policy can name, as small functions built once per field.

Each method is checked against the canonical type of its field when the policy is loaded (a year of a
boolean, a département of a timestamp are errors then, not surprises at the first record), and turned
into an *operation*: a closure ``(parent record, record context) → national value`` that reads its own
field. Operations read their parent rather than their value so that a generalization may look at a
sibling (a postal code is only a French département when the address is in France).

Methods: ``keep``, ``drop``, ``pseudonymize`` (keyed HMAC, with a context), ``generalize`` (``to``:
``year``, ``year_month``, ``departement``, ``age_band``), ``date_shift`` (per-patient offset).
Free text is never a method's input: the policy loader refuses anything but ``drop`` on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from streams.pseudonymize.keys import Key
from streams.pseudonymize.pseudonym import (
    CONTEXT_ENCOUNTER,
    CONTEXT_EVENT,
    CONTEXT_PATIENT,
    POLICY_CONTEXTS,
    PatientIdentity,
    date_shift_days,
    encounter_identity,
    national_event_id,
    patient_identity,
    pseudonym,
    remembered_pseudonym,
)

METHODS = ("keep", "drop", "pseudonymize", "generalize", "date_shift")
GENERALIZATIONS = ("year", "year_month", "departement", "age_band")
FRENCH_COUNTRIES = frozenset({"FR", "FRA", "FRANCE", "250"})
DEFAULT_AGE_TOP = 90  # ages above are one band: very old ages are rare enough to single people out

_DATE_TEXT = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MethodError(ValueError):
    """A method cannot apply to a value; the text says what rule failed, never the value."""


# ------------------------------------------------------------------ the record context


class RecordContext:
    """What operations of one canonical record share: the key, the patient, the reference time.

    Built once per record by the transform; the date-shift offset and the reference time are computed
    only if an operation asks, so policies that use neither pay nothing for them.
    """

    __slots__ = ("_reference", "_shift", "envelope", "identity", "key", "max_shift_days", "patient_ref")

    def __init__(
        self,
        key: Key,
        identity: PatientIdentity,
        envelope: Mapping[str, Any],
        max_shift_days: int,
        patient_ref: Mapping[str, Any] | None = None,
    ) -> None:
        self.key = key
        self.patient_ref = patient_ref  # the record's own patient block, whose identity is already known
        self.identity = identity
        self.envelope = envelope
        self.max_shift_days = max_shift_days
        self._shift: int | None = None
        self._reference: datetime | None = None

    def shift_days(self) -> int:
        if self._shift is None:
            self._shift = date_shift_days(self.key, self.identity, self.max_shift_days)
        return self._shift

    def reference_time(self) -> datetime | None:
        """When the event happened (clinical time, else reception): ages are ages at that moment."""
        if self._reference is None:
            when = self.envelope.get("event_time")
            if when is None:
                when = self.envelope.get("ingest_time")
            self._reference = as_datetime(when) if when is not None else None
        return self._reference

    def pseudonym(self, context: str, identifier: str) -> str:
        return pseudonym(self.key, context, identifier)

    def cached_pseudonym(self, context: str, identifier: str) -> str:
        """Patients and visits recur in a stream; their pseudonyms are remembered per key."""
        return remembered_pseudonym(self.key, context, identifier)


Op = Callable[[Mapping[str, Any], RecordContext], Any]


# ------------------------------------------------------------------ value functions


def as_datetime(value: Any) -> datetime:
    """fastavro gives aware datetimes for timestamp-micros; producers may also hand raw microseconds."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(microseconds=value)
    raise MethodError("expected a timestamp")


def _date_text_parts(text: Any) -> tuple[int, int | None, int | None]:
    match = _DATE_TEXT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise MethodError("expected a date in FHIR form YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = match.groups()
    return int(year), int(month) if month else None, int(day) if day else None


def generalize_date(value: Any, to: str, zone: tzinfo) -> str:
    """A timestamp or a FHIR date string truncated to ``YYYY`` or ``YYYY-MM``.

    Timestamps are truncated on the local calendar of ``zone``: a date-precision time of 1 March in
    Paris is 28 February 23:00 UTC, and truncating in UTC would move it to the wrong month. A partial
    date string keeps what it has (a birth year stays a year when asked for a month).
    """
    if isinstance(value, str):
        year, month, _ = _date_text_parts(value)
    else:
        local = as_datetime(value).astimezone(zone)
        year, month = local.year, local.month
    if to == "year" or month is None:
        return f"{year:04d}"
    return f"{year:04d}-{month:02d}"


def departement(code: Any, country: Any = None) -> str | None:
    """The département of a French postal code or INSEE commune code; None when it is not French.

    Postal codes: the first two digits, except overseas (97x, 98x: three digits) and Corsica, whose
    postal codes all start with 20: 200xx-201xx are Corse-du-Sud (2A), the rest (202xx-206xx) are
    Haute-Corse (2B). INSEE commune codes already spell 2A/2B, and 99xxx means born abroad ("99").
    Saint-Barthélemy and Saint-Martin use Guadeloupe's postal codes (971xx), so they read as 971 —
    coarser, never finer, which is the right error for a generalization.
    """
    if country is not None and str(country).strip().upper() not in FRENCH_COUNTRIES:
        return None
    if not isinstance(code, str):
        return None
    text = code.strip().upper().replace(" ", "")
    if len(text) != 5:
        return None
    head = text[:2]
    if head in ("2A", "2B") and text[2:].isdigit():
        return head
    if not text.isdigit() or head == "00":
        return None
    if head == "20":
        return "2A" if text[2] in "01" else "2B"
    if head in ("97", "98"):
        return text[:3]
    return head


def age_band(birth: Any, at: datetime | None, width: int, top: int, zone: tzinfo) -> str | None:
    """``"40-44"``-style band of the age in whole years at ``at``; ``"90+"`` at and above ``top``.

    A partial birth date counts from the first day of the period it gives (a conservative guess the
    band width absorbs); a birth after the event is a data error and yields None, not a negative band.
    """
    if at is None:
        return None
    year, month, day = _date_text_parts(birth)
    when = at.astimezone(zone).date()
    born = date(year, month or 1, day or 1)
    age = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
    if age < 0:
        return None
    if age >= top:
        return f"{top}+"
    low = age // width * width
    return f"{low}-{min(low + width - 1, top - 1)}"


def shift_timestamp(value: Any, days: int, zone: tzinfo) -> datetime:
    """Shift by whole local days: a date-precision time (local midnight) stays local midnight across DST."""
    local = as_datetime(value).astimezone(zone)
    naive = local.replace(tzinfo=None) + timedelta(days=days)
    return naive.replace(tzinfo=zone).astimezone(UTC)


def shift_date_text(text: Any, days: int) -> str:
    """Shift a FHIR date string; a partial date shifts the first day of its period and keeps its precision."""
    year, month, day = _date_text_parts(text)
    shifted = date(year, month or 1, day or 1) + timedelta(days=days)
    if month is None:
        return f"{shifted.year:04d}"
    if day is None:
        return f"{shifted.year:04d}-{shifted.month:02d}"
    return shifted.isoformat()


# ------------------------------------------------------------------ method specifications


@dataclass(frozen=True)
class LeafType:
    """What the loader knows of a canonical field when it checks a method against it."""

    name: str  # the field name
    base: str  # record | timestamp | date_text | string | boolean | int | long | double | enum
    nullable: bool
    array: bool
    record_name: str | None = None  # the Avro name when base is record (PatientRef, EncounterRef…)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed, checked method with its parameters; ``op`` builds the operation for one field."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def context(self) -> str:
        return str(self.params.get("context", ""))

    @property
    def to(self) -> str:
        return str(self.params.get("to", ""))


_PARAMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # method → (required, optional)
    "keep": (frozenset(), frozenset()),
    "drop": (frozenset(), frozenset()),
    "pseudonymize": (frozenset({"context"}), frozenset()),
    "generalize": (frozenset({"to"}), frozenset({"width", "top", "as"})),
    "date_shift": (frozenset(), frozenset()),
}


def parse_method(raw: Any) -> MethodSpec:
    """``keep`` or ``{method: generalize, to: year_month}`` → a checked :class:`MethodSpec`.

    Raises MethodError with the problem; the loader adds file, kind and path.
    """
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, Mapping):
        raise MethodError("a method is a name (keep, drop, …) or a mapping with 'method' and its parameters")
    name = raw.get("method")
    if name not in _PARAMS:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    params = {k: v for k, v in raw.items() if k != "method"}
    required, optional = _PARAMS[name]
    missing = sorted(required - params.keys())
    if missing:
        raise MethodError(f"method {name} needs parameter {missing[0]!r}")
    unknown = sorted(params.keys() - required - optional)
    if unknown:
        raise MethodError(f"method {name} has no parameter {unknown[0]!r}")
    if name == "pseudonymize" and params["context"] not in POLICY_CONTEXTS:
        raise MethodError(
            f"unknown pseudonymization context {params['context']!r}; "
            f"known: {', '.join(sorted(POLICY_CONTEXTS))}"
        )
    if name == "generalize":
        to = params["to"]
        if to not in GENERALIZATIONS:
            raise MethodError(f"unknown generalization {to!r}; known: {', '.join(GENERALIZATIONS)}")
        if to == "age_band":
            width = params.get("width")
            if width is None:
                raise MethodError("generalize to age_band needs parameter 'width' (years per band)")
            if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 50:
                raise MethodError("age_band width must be a whole number of years from 1 to 50")
            top = params.get("top", DEFAULT_AGE_TOP)
            if not isinstance(top, int) or isinstance(top, bool) or not width <= top <= 120:
                raise MethodError(
                    "age_band top must be a whole number of years, at least the width, at most 120"
                )
        elif "width" in params or "top" in params:
            raise MethodError(f"parameters 'width' and 'top' belong to age_band, not to {to}")
        alias = params.get("as")
        if alias is not None and (not isinstance(alias, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", alias)):
            raise MethodError("'as' must be a field name (lowercase letters, digits, '_')")
    return MethodSpec(name, params)


def check_applicable(spec: MethodSpec, leaf: LeafType) -> None:
    """Whether the method makes sense for the canonical type; MethodError says why not."""
    if spec.method in ("keep", "drop"):
        return
    if spec.method == "pseudonymize":
        context = spec.context
        if context == CONTEXT_PATIENT:
            if leaf.record_name != "PatientRef" or leaf.array:
                raise MethodError("context patient applies to a patient block (PatientRef) only")
        elif context == CONTEXT_ENCOUNTER:
            if leaf.record_name != "EncounterRef" or leaf.array:
                raise MethodError("context encounter applies to a visit block (EncounterRef) only")
        elif leaf.base != "string":
            raise MethodError(f"context {context} applies to text identifiers (string or list of strings)")
        is_event_field = leaf.name == "event_id" or leaf.name.endswith("_event_ids")
        if (context == CONTEXT_EVENT) != is_event_field:
            raise MethodError(
                "event ids and only event ids use context event, so that references between events "
                "resolve inside the platform"
            )
        return
    if leaf.array:
        raise MethodError(f"{spec.method} applies to single values, not lists")
    if spec.method == "date_shift":
        if leaf.base not in ("timestamp", "date_text"):
            raise MethodError("date_shift applies to timestamps and date fields only")
        return
    to = spec.to
    if to in ("year", "year_month") and leaf.base not in ("timestamp", "date_text"):
        raise MethodError(f"generalize to {to} applies to timestamps and date fields only")
    if to == "departement" and leaf.base != "string":
        raise MethodError("generalize to departement applies to postal or INSEE commune codes (text)")
    if to == "age_band" and leaf.base != "date_text":
        raise MethodError("generalize to age_band applies to a birth date (date field)")


def build_op(spec: MethodSpec, leaf: LeafType, zone: tzinfo) -> Op:
    """The operation for one field. Only called for checked (spec, leaf) pairs; never for keep/drop
    (the compiler copies kept fields without a call per field)."""
    name = leaf.name
    method = spec.method
    if method == "pseudonymize":
        return _pseudonymize_op(spec.context, leaf)
    if method == "date_shift":
        if leaf.base == "timestamp":

            def shift_ts(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
                value = parent.get(name)
                return None if value is None else shift_timestamp(value, ctx.shift_days(), zone)

            return shift_ts

        def shift_text(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            value = parent.get(name)
            return None if value is None else shift_date_text(value, ctx.shift_days())

        return shift_text
    to = spec.to
    if to in ("year", "year_month"):

        def gen_date(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            value = parent.get(name)
            return None if value is None else generalize_date(value, to, zone)

        return gen_date
    if to == "departement":

        def gen_dep(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            return departement(parent.get(name), parent.get("country"))

        return gen_dep
    if to == "age_band":
        width = int(spec.params["width"])
        top = int(spec.params.get("top", DEFAULT_AGE_TOP))

        def gen_age(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            value = parent.get(name)
            return None if value is None else age_band(value, ctx.reference_time(), width, top, zone)

        return gen_age
    raise MethodError(f"no operation for method {method}")  # unreachable after parse_method


def _pseudonymize_op(context: str, leaf: LeafType) -> Op:
    name = leaf.name
    if context == CONTEXT_PATIENT:

        def patient_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            ref = parent.get(name)
            if ref is None:
                return None
            identity = ctx.identity if ref is ctx.patient_ref else patient_identity(ref)
            return {
                "pseudonym": ctx.cached_pseudonym(CONTEXT_PATIENT, identity.value),
                "linkable": identity.linkable,
                "key_id": ctx.key.key_id,
            }

        return patient_op
    if context == CONTEXT_ENCOUNTER:

        def encounter_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            ref = parent.get(name)
            if ref is None:
                return None
            return ctx.cached_pseudonym(CONTEXT_ENCOUNTER, encounter_identity(ref))

        return encounter_op
    if context == CONTEXT_EVENT:
        if leaf.array:

            def event_ids_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
                key = ctx.key
                return [national_event_id(key, x) for x in parent.get(name) or ()]

            return event_ids_op

        def event_id_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            value = parent.get(name)
            return None if value is None else national_event_id(ctx.key, value)

        return event_id_op
    if leaf.array:

        def strings_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            return [ctx.pseudonym(context, x) for x in parent.get(name) or ()]

        return strings_op

    def string_op(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
        value = parent.get(name)
        return None if value is None else ctx.cached_pseudonym(context, value)

    return string_op


def output_type(spec: MethodSpec, leaf: LeafType, canonical_type: Any) -> Any:
    """The Avro type a method's output has in the national schema (the schema follows the policy)."""
    if spec.method in ("keep", "date_shift"):
        return canonical_type
    if spec.method == "pseudonymize":
        if spec.context == CONTEXT_PATIENT:
            return ["null", "PatientPseudonym"] if leaf.nullable else "PatientPseudonym"
        if leaf.array:
            return {"type": "array", "items": "string"}
        return ["null", "string"] if leaf.nullable else "string"
    return ["null", "string"]  # generalizations: a value may not generalize (a foreign postal code)


def describe(spec: MethodSpec) -> str:
    """What the platform receives, in words: used for the national schemas' docs and the policy tables."""
    if spec.method == "keep":
        return "kept as is"
    if spec.method == "drop":
        return "not sent"
    if spec.method == "date_shift":
        return "shifted by the patient's offset (whole days, same for all the patient's events)"
    if spec.method == "pseudonymize":
        return {
            CONTEXT_PATIENT: "patient pseudonym {pseudonym, linkable, key_id}",
            CONTEXT_ENCOUNTER: "visit pseudonym (HMAC of authority and visit number)",
            CONTEXT_EVENT: "national event id (hex HMAC of the canonical event id)",
        }.get(spec.context, f"pseudonym (HMAC, context {spec.context})")
    return {
        "year": "year only, YYYY",
        "year_month": "year and month only, YYYY-MM",
        "departement": "département (2 characters, 2A/2B, 3 digits overseas); null when not French",
        "age_band": f"age band at the event, {spec.params.get('width')} years wide, "
        f"{spec.params.get('top', DEFAULT_AGE_TOP)}+ at the top",
    }[spec.to]
