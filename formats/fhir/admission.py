"""What the FHIR mapper will always refuse, decided once: the door refuses it, the mapper dead-letters it.

Issue #18: the FHIR door answered 2xx for payloads the normalizer then refused — a subject that links no
patient, a code without a coded coding, a status outside its required binding, a time no datetime can
hold. The R4 schema check was already shared (``validate.py``); these rules were the mapper's alone.
They live here, in the pure formats layer, so that ``connectors/fhir_rest/intake.py`` and
``streams/normalize/fhir/`` call the very same functions with the very same inputs:

* :func:`check_mappable` — the rules of one resource, in the order the mapper meets them;
* :func:`walk_bundle` and :func:`check_bundle` — which entries of a Bundle are mapped, deleted or
  skipped, and the rules of the Bundle as a whole (PATCH, DELETE urls, nothing mapped);
* the pieces both sides use while mapping too (:func:`link_patient`, :func:`patient_key`,
  :func:`status_of`, :func:`require_code`...), so a refusal is worded once.

Rules that look beyond the resource take that context explicitly, as a :class:`Scope`: the other
resources of the same payload (by fullUrl, ``urn:uuid`` included, and by ``<Type>/<id>``), the
identifiers other entries gave for a ``Patient/<id>``, and the sender's facility, which scopes
identifiers without a system. The door always has a sender (every credential names a
``facility|application``) but not its name in these pure functions: :data:`SENDER` stands for it,
since no rule depends on what the facility is called, only on there being one. A batch entry is stored
on its own, so it is checked alone: a reference to another entry of the batch resolves to nothing, as
it will in the mapper (and as FHIR's batch rules say it should).

Times without an offset are read by the mapper in the hospital's zone, which the door does not know;
:func:`check_time` keeps them a day inside the instant range, so they are readable in every zone and
the decision does not depend on one. Reasons name paths and rules, never values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from functools import lru_cache
from typing import Any, Final, Generic, NamedTuple, Protocol, TypeVar

from formats.clinical.identity import INS_OIDS, IdentityError, LocalId, oid_of, patient_ref
from formats.clinical.times import EARLIEST, LATEST, TimeFormatError, parse_fhir_datetime
from formats.reasons import ReasonCode, Refused

Record = dict[str, Any]

MAPPED_TYPES: Final = frozenset(
    {"Patient", "Encounter", "Observation", "Condition", "Procedure", "DiagnosticReport"}
)
# Validated and used to resolve references inside a Bundle; they produce no event of their own.
SUPPORTING_TYPES: Final = frozenset({"Organization", "Location", "Device", "Specimen"})
# First entry of a Subscription notification: R4 Backport IG (Parameters) or R4B/R5 (SubscriptionStatus).
NOTIFICATION_STATUS_TYPES: Final = frozenset({"Parameters", "SubscriptionStatus"})

# Required bindings of the elements that fill closed canonical fields (fhir.resources does not check them).
_ENDINGS: Final = ("entered-in-error", "unknown")
STATUSES: Final[Mapping[str, frozenset[str]]] = {
    "Observation": frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", *_ENDINGS}
    ),
    "Encounter": frozenset(
        {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", *_ENDINGS}
    ),
    "Procedure": frozenset(
        {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", *_ENDINGS}
    ),
    "DiagnosticReport": frozenset(
        {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled"}
        | set(_ENDINGS)
    ),
}
GENDERS: Final = frozenset({"male", "female", "other", "unknown"})
UNSUPPORTED_VALUES: Final = ("valueRange", "valueRatio", "valueSampledData", "valuePeriod")
LINKAGE: Final = "patient linkage"
# The door's stand-in for its sender's facility (see the module docstring); it never leaves this module.
SENDER: Final = "(sender)"

_REFERENCE: Final = re.compile(
    r"(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
_ZONED: Final = re.compile(r".*T.*(?:Z|[+-]\d{2}:\d{2})", re.ASCII | re.DOTALL)
# What nearly every resource carries: a zoned dateTime of these centuries, every field in its range.
_PLAIN: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,6})?(?:Z|[+-](\d{2}):(\d{2}))", re.ASCII
)
_DAY: Final = timedelta(days=1)


# --- reading (lax JSON, as pydantic let it through) ---------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _obj(value: Any) -> Record | None:
    return value if isinstance(value, dict) else None


def _objs(value: Any) -> Iterable[Record]:
    return (v for v in value if isinstance(v, dict)) if isinstance(value, list) else ()


@lru_cache(maxsize=4096)  # the same few references recur in every resource of a feed
def parse_reference(ref: str) -> tuple[str, str, str | None] | None:
    """'[base/]Type/id[/_history/v]' → (Type, id, version); None for urn:uuid, #contained or queries."""
    match = _REFERENCE.fullmatch(ref)
    if match is None:
        return None
    return match.group("type"), match.group("id"), match.group("version")


def finite_number(value: Any, location: str) -> float | None:
    """A decimal as a double; None when it is no number; refused when no double can hold it."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise Refused(
            ReasonCode.INVALID_RESOURCE, f"{location} is too large for a double", location, "decimal range"
        ) from None
    if not math.isfinite(number):
        raise Refused(
            ReasonCode.INVALID_RESOURCE, f"{location} is not a finite number", location, "decimal range"
        )
    return number


def resource_type(resource: Any, location: str) -> str:
    if not isinstance(resource, dict):
        raise Refused(
            ReasonCode.INVALID_RESOURCE, f"{location} is not a JSON object", location, "FHIR JSON resource"
        )
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise Refused(
            ReasonCode.INVALID_RESOURCE, f"{location} has no resourceType", location, "FHIR JSON resource"
        )
    return rtype


# --- single rules -----------------------------------------------------------------------------------


def _plainly_readable(text: str) -> bool:
    """A shortcut, never a second rule: True only where parse_fhir_datetime surely succeeds (fixed-width
    digits compare as text); anything else takes the full parse. Saves most of the check's time."""
    match = _PLAIN.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second, off_hour, off_minute = match.groups()
    return (
        "1900" <= year <= "2999"
        and "01" <= month <= "12"
        and "01" <= day <= "28"
        and hour <= "23"
        and minute <= "59"
        and second <= "59"
        and (off_hour is None or (off_hour <= "14" and off_minute <= "59"))
    )


def check_time(value: Any, location: str) -> None:
    """Readable as a FHIR date/dateTime/instant, in whatever zone offset-less values are read."""
    text = _text(value)
    if text is None or _plainly_readable(text.strip()):
        return
    try:
        when = parse_fhir_datetime(text, UTC)
        # |offset| < 24 h in every zone: a day's margin makes the zone irrelevant to the decision.
        local = when is not None and not _ZONED.fullmatch(text.strip())
        if local and when is not None and not EARLIEST + _DAY <= when.instant <= LATEST - _DAY:
            raise TimeFormatError("date or time out of range")
    except TimeFormatError as exc:
        raise Refused(
            ReasonCode.BAD_TIME, f"{location} is not a valid FHIR date/time: {exc}", location, "FHIR dateTime"
        ) from None


def _check_period(value: Any, location: str) -> None:
    period = _obj(value) or {}
    check_time(period.get("start"), f"{location}.start")
    check_time(period.get("end"), f"{location}.end")


def status_of(resource: Record, rtype: str) -> str:
    """The status in its required binding; absent (with a data-absent ``_status``) reads ``unknown``."""
    status = resource.get("status")
    if status is None:
        return "unknown"
    if not isinstance(status, str) or status not in STATUSES[rtype]:
        raise Refused(
            ReasonCode.INVALID_RESOURCE,
            f"{rtype}.status: code outside the required value set",
            f"{rtype}.status",
            "required binding",
        )
    return status


def check_gender(resource: Record) -> None:
    gender = resource.get("gender")
    if gender is not None and (not isinstance(gender, str) or gender not in GENDERS):
        raise Refused(
            ReasonCode.INVALID_RESOURCE,
            "Patient.gender: code outside the required value set",
            "Patient.gender",
            "required binding",
        )


def require_code(concept: Any, location: str, rule: str) -> None:
    """A CodeableConcept with at least one coding that has a code (text alone is no canonical code)."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not any(_text(c.get("code")) for c in _objs(codings)):
        raise Refused(ReasonCode.NO_CODE, f"{location} has no coding with a code", location, rule)


def unsupported_value(resource: Record, location: str) -> None:
    """value[x] types with no canonical slot: refused rather than dropped."""
    for name in UNSUPPORTED_VALUES:
        if name in resource:
            raise Refused(
                ReasonCode.UNSUPPORTED_VALUE,
                f"{location}.{name} has no canonical form",
                f"{location}.{name}",
                "canonical Observation value",
            )


def _quantity_number(value: Any, location: str) -> float | None:
    quantity = _obj(value)
    return None if quantity is None else finite_number(quantity.get("value"), f"{location}.value")


def _check_value(resource: Record, location: str) -> None:
    """value[x] of an Observation or a component, read in the mapper's order of preference."""
    if "valueQuantity" in resource:
        _quantity_number(resource.get("valueQuantity"), f"{location}.valueQuantity")
    elif any(k in resource for k in ("valueCodeableConcept", "valueString", "valueBoolean")):
        return
    elif "valueInteger" in resource:
        finite_number(resource.get("valueInteger"), f"{location}.valueInteger")
    elif "valueDateTime" not in resource and "valueTime" not in resource:
        unsupported_value(resource, location)


def _check_reference_range(ranges: Any, location: str) -> None:
    """The bounds of the ranges the mapper reads: up to the first non-empty one."""
    for i, rng in enumerate(_objs(ranges)):
        low = _quantity_number(rng.get("low"), f"{location}[{i}].low")
        high = _quantity_number(rng.get("high"), f"{location}[{i}].high")
        if low is not None or high is not None or _text(rng.get("text")) is not None:
            return


def check_visit(resource: Record, full_url: str | None) -> None:
    """An Encounter names its visit: an identifier, an id, or a urn:uuid fullUrl in its Bundle."""
    for ident in _objs(resource.get("identifier")):
        if _text(ident.get("value")) is not None and ident.get("use") != "old":
            return
    if _text(resource.get("id")) or (full_url and full_url.startswith("urn:uuid:")):
        return
    raise Refused(
        ReasonCode.NO_VISIT,
        "Encounter has neither an identifier nor an id",
        "Encounter.identifier",
        "visit number",
    )


# --- patient identity and linkage ---------------------------------------------------------------------


def local_id(ident: Any, facility: str) -> LocalId | None:
    """A FHIR Identifier as a hospital identifier; one without a system is scoped by its sender."""
    if not isinstance(ident, dict):
        return None
    value = _text(ident.get("value"))
    if value is None or ident.get("use") == "old":
        return None
    value = value.strip()
    system = _text(ident.get("system"))
    kind = _obj(ident.get("type"))
    type_codes = [str(c["code"]) for c in _objs(kind.get("coding") if kind else None) if _text(c.get("code"))]
    type_code = "PI" if "PI" in type_codes else (type_codes[0] if type_codes else None)
    if system is None:
        return LocalId(value, facility, None, type_code)
    if system.startswith("urn:oid:"):
        return LocalId(value, None, oid_of(system), type_code)
    return LocalId(value, system, None, type_code)


def patient_ids(resource: Record, facility: str) -> tuple[list[LocalId], bool]:
    """(the Patient's hospital identifiers, whether one of them is an INS)."""
    ids = [i for i in (local_id(x, facility) for x in _objs(resource.get("identifier"))) if i is not None]
    return ids, any(i.authority_oid in INS_OIDS for i in ids)


def patient_key(
    ids: list[LocalId],
    has_ins: bool,
    reliability: Iterable[str] = (),
    dropped: list[IdentityError] | None = None,
) -> Record:
    """A Patient resource's PatientRef; an INS failing its key check next to an IPP goes to ``dropped``."""
    try:
        return patient_ref(ids, reliability, dropped)
    except IdentityError as exc:
        if exc.code == ReasonCode.NO_LOCAL_IDENTIFIER:
            raise Refused(
                ReasonCode.NO_PATIENT,
                "Patient has no hospital patient identifier (IPP) besides the INS"
                if has_ins
                else "Patient has no usable identifier (an IPP with its system)",
                "Patient.identifier",
                "IPP required",
            ) from None
        raise Refused(exc.code, str(exc), "Patient.identifier", "INS") from None


class Held(Protocol):
    """A resource of the payload as each side holds it (the mapper's entry, the door's walk)."""

    @property
    def resource(self) -> Record: ...

    @property
    def rtype(self) -> str: ...

    @property
    def full_url(self) -> str | None: ...


H = TypeVar("H", bound=Held)


@dataclass(frozen=True, slots=True)
class Scope(Generic[H]):
    """What the rules may see beyond the resource itself (see the module docstring)."""

    refs: Mapping[str, H] = field(default_factory=dict)  # fullUrl and '<Type>/<id>' → entry, first wins
    aliases: Mapping[str, Record] = field(default_factory=dict)  # 'Patient/<id>' → an identifier given
    facility: str = SENDER


def scope_of(entries: Sequence[H], facility: str = SENDER) -> Scope[H]:
    """The payload's resources of mapped and supporting types, as references resolve among them."""
    refs: dict[str, H] = {}
    for entry in entries:
        if entry.full_url:
            refs.setdefault(entry.full_url, entry)
        rid = _text(entry.resource.get("id"))
        if rid:
            refs.setdefault(f"{entry.rtype}/{rid}", entry)
    # Another reference to the same Patient/<id> with an identifier keeps one key per patient per payload.
    aliases: dict[str, Record] = {}
    for entry in entries if len(entries) > 1 else ():
        subject = _obj(entry.resource.get("subject"))
        ident = _obj(subject.get("identifier")) if subject else None
        text = _text(subject.get("reference")) if subject else None
        parsed = parse_reference(text) if text else None
        if ident is not None and parsed is not None and parsed[0] == "Patient":
            aliases.setdefault(f"Patient/{parsed[1]}", ident)
    return Scope(refs, aliases, facility)


def resolve(ref: str, root: Record, scope: Scope[H]) -> tuple[Record, str, H | None] | None:
    """(resource, type, its entry — None when contained) a reference points at inside the payload."""
    if ref.startswith("#"):
        for contained in _objs(root.get("contained")):
            if contained.get("id") == ref[1:] and isinstance(contained.get("resourceType"), str):
                return contained, contained["resourceType"], None
        return None
    hit = scope.refs.get(ref)
    if hit is None:
        parsed = parse_reference(ref)
        hit = scope.refs.get(f"{parsed[0]}/{parsed[1]}") if parsed else None
    return None if hit is None else (hit.resource, hit.rtype, hit)


@dataclass(frozen=True, slots=True)
class Link(Generic[H]):
    """How a Reference(Patient) names its patient: a Patient of the payload, or a key built from it."""

    target: tuple[Record, H | None] | None = None  # the Patient in the payload (entry None: contained)
    patient: Record | None = None  # else the PatientRef from the reference's (or an alias') identifier
    # else the reference itself, scoped by the sender: its PatientRef is built by who needs it (the
    # mapper), as patient_ref cannot refuse a value with an authority and no OID.
    scoped: LocalId | None = None
    dropped: IdentityError | None = None  # an INS left out on the way (a partial mapping)


def link_patient(value: Any, root: Record, location: str, scope: Scope[H]) -> Link[H]:
    """Resolution order of docs/mapping-fhir.md "Patient linkage": the Patient in the payload, the
    reference's identifier, an identifier another entry gave for it, then the facility-scoped reference."""
    ref = _obj(value)
    if ref is None:
        raise Refused(ReasonCode.NO_PATIENT, f"{location} is missing", location, "a Reference(Patient)")
    text = _text(ref.get("reference"))
    declared = _text(ref.get("type"))
    if declared is not None and declared != "Patient":
        raise Refused(ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, LINKAGE)
    if text:
        found = resolve(text, root, scope)
        if found is not None:
            if found[1] != "Patient":
                raise Refused(
                    ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, LINKAGE
                )
            return Link(target=(found[0], found[2]))
    parsed = parse_reference(text) if text else None
    alias = scope.aliases.get(f"Patient/{parsed[1]}") if parsed and parsed[0] == "Patient" else None
    bad_ins: IdentityError | None = None
    for ident in (_obj(ref.get("identifier")), alias):
        local = local_id(ident, scope.facility)
        if local is not None:
            try:
                return Link(patient=patient_ref([local]))
            except IdentityError as exc:
                # An INS alone is no hospital key, a malformed one even less: try the next way.
                if exc.code != ReasonCode.NO_LOCAL_IDENTIFIER:
                    bad_ins = bad_ins or exc
    if parsed is None or parsed[0] != "Patient" or not scope.facility:
        if bad_ins is not None:
            raise Refused(bad_ins.code, str(bad_ins), f"{location}.identifier", "INS")
        if parsed is not None and parsed[0] != "Patient":
            raise Refused(
                ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, LINKAGE
            )
        raise Refused(
            ReasonCode.NO_PATIENT, f"{location} cannot be resolved to a patient identifier", location, LINKAGE
        )
    return Link(scoped=LocalId(f"Patient/{parsed[1]}", scope.facility, None), dropped=bad_ins)


def _check_identity(resource: Record, facility: str) -> None:
    ids, has_ins = patient_ids(resource, facility)
    patient_key(ids, has_ins, (), [])


def _check_subject(value: Any, root: Record, location: str, scope: Scope[Any]) -> None:
    link = link_patient(value, root, location, scope)
    if link.target is not None:
        _check_identity(link.target[0], scope.facility)


# --- one resource -----------------------------------------------------------------------------------


def _effective(r: Record, rtype: str) -> None:
    if "effectiveDateTime" in r:
        check_time(r.get("effectiveDateTime"), f"{rtype}.effectiveDateTime")
    elif "effectiveInstant" in r:
        check_time(r.get("effectiveInstant"), f"{rtype}.effectiveInstant")
    elif "effectivePeriod" in r:
        _check_period(r.get("effectivePeriod"), f"{rtype}.effectivePeriod")


def _patient(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    check_gender(r)
    check_time(r.get("deceasedDateTime"), "Patient.deceasedDateTime")
    for i, link in enumerate(_objs(r.get("link"))):
        if link.get("type") == "replaced-by":
            _check_subject(link.get("other"), r, f"Patient.link[{i}].other", scope)
            break
    _check_identity(r, scope.facility)
    check_time(r.get("birthDate"), "Patient.birthDate")
    check_time((_obj(r.get("meta")) or {}).get("lastUpdated"), "Patient.meta.lastUpdated")


def _encounter(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    check_visit(r, full_url)
    status_of(r, "Encounter")
    _check_period(r.get("period"), "Encounter.period")
    _check_subject(r.get("subject"), r, "Encounter.subject", scope)


def _observation(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    status_of(r, "Observation")
    require_code(r.get("code"), "Observation.code", "coded observation")
    _check_value(r, "Observation")
    for i, component in enumerate(_objs(r.get("component"))):
        where = f"Observation.component[{i}]"
        require_code(component.get("code"), f"{where}.code", "coded observation")
        _check_value(component, where)
        _check_reference_range(component.get("referenceRange"), f"{where}.referenceRange")
    _effective(r, "Observation")
    check_time(r.get("issued"), "Observation.issued")
    _check_subject(r.get("subject"), r, "Observation.subject", scope)
    _check_reference_range(r.get("referenceRange"), "Observation.referenceRange")


def _condition(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    require_code(r.get("code"), "Condition.code", "CIM-10 diagnosis")
    if "onsetDateTime" in r:
        check_time(r.get("onsetDateTime"), "Condition.onsetDateTime")
    elif "onsetPeriod" in r:
        _check_period(r.get("onsetPeriod"), "Condition.onsetPeriod")
    check_time(r.get("recordedDate"), "Condition.recordedDate")
    _check_subject(r.get("subject"), r, "Condition.subject", scope)


def _procedure(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    status_of(r, "Procedure")
    require_code(r.get("code"), "Procedure.code", "CCAM act")
    if "performedDateTime" in r:
        check_time(r.get("performedDateTime"), "Procedure.performedDateTime")
    elif "performedPeriod" in r:
        _check_period(r.get("performedPeriod"), "Procedure.performedPeriod")
    _check_subject(r.get("subject"), r, "Procedure.subject", scope)


def _diagnostic_report(r: Record, scope: Scope[Any], full_url: str | None) -> None:
    status_of(r, "DiagnosticReport")
    require_code(r.get("code"), "DiagnosticReport.code", "coded report")
    _effective(r, "DiagnosticReport")
    check_time(r.get("issued"), "DiagnosticReport.issued")
    _check_subject(r.get("subject"), r, "DiagnosticReport.subject", scope)


_CHECKS: Final[Mapping[str, Callable[[Record, Scope[Any], str | None], None]]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Observation": _observation,
    "Condition": _condition,
    "Procedure": _procedure,
    "DiagnosticReport": _diagnostic_report,
}


class Walked(NamedTuple):
    """One entry of a Bundle as both sides read it (a tuple: built per resource on the door's hot path)."""

    position: int
    entry: Record
    resource: Record  # {} for a DELETE
    rtype: str  # "" for a DELETE
    full_url: str | None = None
    delete: bool = False


def lone_scope(resource: Record, rtype: str, facility: str = SENDER) -> Scope[Walked]:
    """A resource stored on its own (a POST, a PUT, a batch entry): it is its own payload —
    ``scope_of`` of that one resource, which has no fullUrl and no other entry to give an alias."""
    rid = _text(resource.get("id"))
    return Scope({f"{rtype}/{rid}": Walked(0, {}, resource, rtype)} if rid else {}, {}, facility)


def check_mappable(
    resource: Record,
    rtype: str,
    where: str = "",
    scope: Scope[Any] | None = None,
    full_url: str | None = None,
) -> None:
    """Every rule the mapper applies to one validated resource; raises Refused as the mapper words it.

    ``where`` prefixes the reason (the door names a batch or transaction entry); ``scope`` is the payload
    the resource is mapped in (its own, :func:`lone_scope`, when omitted); ``full_url`` its entry's.
    Types that yield no event of their own have no rule here.
    """
    check = _CHECKS.get(rtype)
    if check is None:
        return
    try:
        check(resource, scope if scope is not None else lone_scope(resource, rtype), full_url)
    except Refused as exc:
        if not where:
            raise
        raise Refused(exc.code, f"{where}{exc.reason}", exc.location, exc.rule) from None


# --- a Bundle -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Walk:
    resources: list[Walked]  # entries whose resource has a mapped or supporting type, in order
    actions: list[Walked]  # DELETE entries and entries of a mapped type, in order
    carried: int  # entries that carry a resource other than an OperationOutcome


def check_entry_resources(bundle: Record) -> None:
    """Each entry's resource, when present, is an object with a resourceType (JSON null is not one)."""
    entries = bundle.get("entry")
    for position, raw in enumerate(entries if isinstance(entries, list) else ()):
        if isinstance(raw, dict) and "resource" in raw:
            resource_type(raw["resource"], f"Bundle.entry[{position}].resource")


def walk_bundle(bundle: Record) -> Walk:
    """Which entries are mapped, deleted or skipped — a notification's status entry, reads, entries
    without a resource (id-only notifications), OperationOutcomes — and PATCH refused. Expects
    :func:`check_entry_resources` and the Bundle's R4 shell to have passed."""
    raw_entries = bundle.get("entry")
    entries = raw_entries if isinstance(raw_entries, list) else []
    start = 0
    if entries and bundle.get("type") in ("history", "subscription-notification"):
        first = entries[0].get("resource") if isinstance(entries[0], dict) else None
        if isinstance(first, dict) and first.get("resourceType") in NOTIFICATION_STATUS_TYPES:
            start = 1  # the notification's status entry; the events follow it
    resources: list[Walked] = []
    actions: list[Walked] = []
    carried = 0
    for position in range(start, len(entries)):
        raw = entries[position]
        if not isinstance(raw, dict):
            continue
        method = (_obj(raw.get("request")) or {}).get("method")
        if method == "DELETE":
            actions.append(Walked(position, raw, {}, "", delete=True))
            continue
        if method == "PATCH":
            raise Refused(
                ReasonCode.UNSUPPORTED_REQUEST,
                "PATCH cannot be applied without the current resource",
                f"Bundle.entry[{position}].request.method",
                "stateless mapping",
            )
        resource = raw.get("resource")
        if method in ("GET", "HEAD") or not isinstance(resource, dict):
            continue  # a read, or an id-only notification entry: fetched by the connector, not mapped
        rtype = resource_type(resource, f"Bundle.entry[{position}].resource")
        if rtype == "OperationOutcome":
            continue  # a searchset's warnings, not data
        carried += 1
        if rtype not in MAPPED_TYPES and rtype not in SUPPORTING_TYPES:
            continue
        walked = Walked(position, raw, resource, rtype, _text(raw.get("fullUrl")))
        resources.append(walked)
        if rtype in MAPPED_TYPES:
            actions.append(walked)
    return Walk(resources, actions, carried)


def delete_target(
    entry: Mapping[str, Any], position: int, facility: str = SENDER
) -> tuple[str, str, str | None]:
    """(Type, id, version) a DELETE entry names; a conditional or malformed url names no event."""
    location = f"Bundle.entry[{position}].request.url"
    url = _text((_obj(entry.get("request")) or {}).get("url"))
    if url is None or "?" in url:
        raise Refused(
            ReasonCode.UNSUPPORTED_REQUEST,
            "conditional or empty DELETE cannot be resolved to events",
            location,
            "DELETE Type/id",
        )
    parsed = parse_reference(url.strip())
    if parsed is None:
        raise Refused(
            ReasonCode.UNSUPPORTED_REQUEST, "DELETE url is not <Type>/<id>", location, "DELETE Type/id"
        )
    if parsed[0] in MAPPED_TYPES and not facility:  # the retraction is keyed on <Type>/<id>@<facility>
        raise Refused(
            ReasonCode.NO_PATIENT, "the deleted resource cannot be keyed without a sender", location
        )
    return parsed


def check_bundle(walk: Walk, scope: Scope[Any], name_entries: bool = False) -> int:
    """The Bundle-level rules and every mapped entry's, in entry order; returns how many events the
    Bundle yields (0: the stage dead-letters it as ``nothing_to_map``). ``name_entries`` prefixes an
    entry's reason with its position, for the door's sender; the dead letter keeps the mapper's words."""
    events = 0
    for walked in walk.actions:
        if walked.delete:
            events += delete_target(walked.entry, walked.position, scope.facility)[0] in MAPPED_TYPES
            continue
        where = f"Bundle.entry[{walked.position}]: " if name_entries else ""
        check_mappable(walked.resource, walked.rtype, where, scope, walked.full_url)
        events += 1
    if walk.carried and not events:
        raise Refused(
            ReasonCode.UNSUPPORTED_RESOURCE,
            "the Bundle holds no resource type this hub maps",
            "Bundle.entry",
            "mapped types",
        )
    return events
