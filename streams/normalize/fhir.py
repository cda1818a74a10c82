"""FHIR R4 JSON (a resource or a Bundle) → canonical events: the pure mapping behind ``ingest.fhir.raw``.

Why the code looks the way it does (the decisions themselves are listed in docs/mapping-fhir.md):

* Validation by fhir.resources' **R4B** models. fhir.resources 8 ships R5 (default), R4B and STU3; R5
  rejects ordinary R4 content (``Encounter.class`` became a list, ``Procedure.performed[x]`` became
  ``occurrence[x]``, ``Condition.clinicalStatus`` became required) while R4B (4.3.0) kept R4's shape for
  every resource mapped here. The models do not check required bindings, so the codes that land in
  closed canonical fields (statuses, gender) are checked here.
* Mapping from the plain JSON dict, not the model objects: validation already costs most of the time
  budget (130–350 µs per resource here), walking pydantic objects would double it. Because pydantic validates
  in lax mode (``"true"`` passes as a boolean, ``"5.2"`` as a decimal), every read coerces or ignores,
  never trusts a Python type.
* Event ids belong to the *resource version*, not to the HTTP message that carried it: the poller and
  the Subscription receiver see the same version in different Bundles, and a DELETE arrives in a later
  message. So for a resource with a logical id the message-id slot of :func:`envelope.event_id` holds
  ``<Type>/<id>`` and the index holds ``_history/<versionId>``; without a versionId it holds
  ``content/<digest>`` (a correction sent without a version must not collapse into the original);
  a resource known only by a ``urn:uuid`` fullUrl uses that URN in place of ``<Type>/<id>``; one with
  neither falls back to the carrying message (``entry[<n>]``).
* No input value ever reaches an exception: reasons name FHIR paths and rules, pydantic's messages
  (which embed the offending input) are reduced to location and error type.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.clinical.identity import INS_OIDS, IdentityError, LocalId, oid_of, patient_ref
from formats.clinical.times import ClinicalTime, TimeFormatError, parse_fhir_datetime
from formats.clinical.units import UCUM_SYSTEM, Quantity, quantity
from formats.fhir.validate import parse_json, validate_bundle_shell, validate_resource
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext, envelope, event_id_of
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError

__all__ = ["map_fhir", "resource_event_id"]

MAPPED_TYPES: Final = frozenset(
    {"Patient", "Encounter", "Observation", "Condition", "Procedure", "DiagnosticReport"}
)
# Validated and used to resolve references inside a Bundle; they produce no event of their own.
SUPPORTING_TYPES: Final = frozenset({"Organization", "Location", "Device", "Specimen"})
# First entry of a Subscription notification: R4 Backport IG (Parameters) or R4B/R5 (SubscriptionStatus).
NOTIFICATION_STATUS_TYPES: Final = frozenset({"Parameters", "SubscriptionStatus"})

FR_CORE_IDENTITY_RELIABILITY: Final = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
)
FR_CORE_INSEE_CODE: Final = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
BIRTH_PLACE: Final = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
MCODE_HISTOLOGY: Final = (
    "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
)
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
FINESS_OID: Final = "1.2.250.1.71.4.2.2"

_CIM10_SYSTEMS: Final = frozenset(
    {common.CIM10, common.ICD10, "http://hl7.org/fhir/sid/icd-10-fr", "urn:oid:2.16.840.1.113883.6.3"}
)
_CCAM_SYSTEMS: Final = frozenset({common.CCAM, "urn:oid:1.2.250.1.215.300.1"})
_ICDO3_SYSTEMS: Final = frozenset({common.ICDO3, "urn:oid:2.16.840.1.113883.6.43.1"})
_TOPOGRAPHY: Final = re.compile(r"C\d\d(?:\.\d)?")
_MORPHOLOGY: Final = re.compile(r"\d{4}/\d")

# Required bindings of the elements that fill closed canonical fields (fhir.resources does not check them).
_ENDINGS: Final = ("entered-in-error", "unknown")
_STATUSES: Final[Mapping[str, frozenset[str]]] = {
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
_GENDERS: Final = frozenset({"male", "female", "other", "unknown"})
# A delete names the version it removes (If-Match / etag); integer versions are numbered from 1 by
# every mainstream server, so the earlier ones can be named too. Bounded: a retraction stays small.
_MAX_RETRACTED_VERSIONS: Final = 100

_REFERENCE: Final = re.compile(
    r"(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
_ETAG: Final = re.compile(r'(?:W/)?"?(?P<version>[A-Za-z0-9\-.]{1,64})"?')
_LINKAGE: Final = "patient linkage"
_TRUE: Final = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "f", "n"})


# --- reading the JSON defensively ---------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _dict(value: Any) -> Record | None:
    return value if isinstance(value, dict) else None


def _dicts(value: Any) -> Iterator[Record]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _number(value: Any, location: str) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    except OverflowError:
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} is too large for a double", location, "decimal range"
        ) from None
    if not math.isfinite(number):
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} is not a finite number", location, "decimal range"
        )
    return number


def _bool(value: Any) -> bool | None:
    """pydantic's lax booleans, so that what validation let through is read the same way."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _coding(value: Any) -> Record | None:
    if not isinstance(value, dict):
        return None
    code = _str(value.get("code"))
    if code is None:
        return None
    return common.coding(_str(value.get("system")), code, _str(value.get("display")))


def _codings(concept: Any) -> list[Record]:
    if not isinstance(concept, dict):
        return []
    return [c for c in map(_coding, concept.get("coding") or ()) if c is not None]


def _first_coding(concept: Any, preferred: str | None = None) -> Record | None:
    codings = _codings(concept)
    if preferred is not None:
        for c in codings:
            if c["system"] == preferred:
                return c
    return codings[0] if codings else None


def _first_code(concept: Any, preferred: str | None = None) -> str | None:
    c = _first_coding(concept, preferred)
    return str(c["code"]) if c else None


def _norm_system(system: Any) -> str:
    return system.rstrip("/") if isinstance(system, str) else ""


def _split_primary(codings: list[Record], systems: frozenset[str]) -> tuple[Record, list[Record], bool]:
    """(primary, the others in order, whether the primary is from `systems`)."""
    for i, c in enumerate(codings):
        if _norm_system(c["system"]) in systems:
            return c, codings[:i] + codings[i + 1 :], True
    return codings[0], codings[1:], False


@lru_cache(maxsize=4096)  # the same few references recur in every resource of a feed
def _parse_reference(ref: str) -> tuple[str, str, str | None] | None:
    """'[base/]Type/id[/_history/v]' → (Type, id, version); None for urn:uuid, #contained or queries."""
    match = _REFERENCE.fullmatch(ref)
    if match is None:
        return None
    return match.group("type"), match.group("id"), match.group("version")


def _etag_version(value: Any) -> str | None:
    text = _str(value)
    if text is None:
        return None
    match = _ETAG.fullmatch(text.strip())
    return match.group("version") if match else None


# --- the document being mapped --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Entry:
    resource: Record
    rtype: str
    position: int | None  # index in Bundle.entry; None for a lone resource or a contained one
    full_url: str | None = None
    etag_version: str | None = None  # Bundle.entry.response.etag, for history Bundles
    holder: _Entry | None = None  # the resource that contains this one ('#id' references)


def _version_index(version: str | None, resource: Record) -> str:
    if version:
        return f"_history/{version}"
    body = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "content/" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _scoped_event_id(ctx: RawContext, source: str, index: str) -> str:
    """``envelope.event_id`` with ``source`` in the message-id slot (no RawContext copy on the hot path)."""
    return event_id_of(ctx.protocol, ctx.facility, ctx.application, source, index)


def _scoped_envelope(
    ctx: RawContext, source: str, index: str, event_type: str, when: ClinicalTime | None
) -> Record:
    env = envelope(ctx, index, event_type, when)
    env["event_id"] = _scoped_event_id(ctx, source, index)
    return env


def resource_event_id(ctx: RawContext, rtype: str, rid: str, version: str) -> str:
    """The event id a versioned resource gets, whatever message carries it (see the module docstring).

    Public because a retraction, a DiagnosticReport and any later consumer must be able to name the
    events of ``<Type>/<id>`` at a version without seeing them again.
    """
    return _scoped_event_id(ctx, f"{rtype}/{rid}", f"_history/{version}")


class _Doc:
    """A payload being mapped: its entries, reference resolution and the identities derived from them."""

    def __init__(self, ctx: RawContext, options: MappingOptions, entries: list[_Entry]) -> None:
        self.ctx = ctx
        self.options = options
        self.by_ref: dict[str, _Entry] = {}
        for entry in entries:
            if entry.full_url:
                self.by_ref.setdefault(entry.full_url, entry)
            rid = _str(entry.resource.get("id"))
            if rid:
                self.by_ref.setdefault(f"{entry.rtype}/{rid}", entry)
        # Keyed by the entry object itself (identity hash): holding it keeps it alive, so a contained
        # resource resolved on the fly can never hand its cache slot to another one (as id() could).
        self._patients: dict[_Entry, Record] = {}
        self._identities: dict[_Entry, tuple[str, str]] = {}
        # 'Patient/<id>' → the logical identifier another reference in this payload gave for it, so that
        # two resources about the same patient get the same key even if only one says who it is.
        self.patient_aliases: dict[str, Record] = {}
        for entry in entries if len(entries) > 1 else ():
            subject = _dict(entry.resource.get("subject"))
            ident = _dict(subject.get("identifier")) if subject else None
            text = _str(subject.get("reference")) if subject else None
            parsed = _parse_reference(text) if text else None
            if ident is not None and parsed is not None and parsed[0] == "Patient":
                self.patient_aliases.setdefault(f"Patient/{parsed[1]}", ident)

    # -- event identity --------------------------------------------------------------------------------

    def identity(self, entry: _Entry) -> tuple[str, str]:
        """(what stands in the message-id slot of the event id, the index) for an entry's event."""
        cached = self._identities.get(entry)
        if cached is not None:
            return cached
        resource = entry.resource
        rid = _str(resource.get("id"))
        meta = _dict(resource.get("meta")) or {}
        version = _str(meta.get("versionId")) or entry.etag_version
        if rid:
            found = (f"{entry.rtype}/{rid}", _version_index(version, resource))
        elif entry.full_url and entry.full_url.startswith(("urn:uuid:", "urn:oid:")):
            found = (entry.full_url, _version_index(version, resource))
        else:
            found = (
                self.ctx.message_id,
                "resource" if entry.position is None else f"entry[{entry.position}]",
            )
        self._identities[entry] = found
        return found

    def event_id(self, entry: _Entry) -> str:
        source, index = self.identity(entry)
        return _scoped_event_id(self.ctx, source, index)

    def event(
        self, kind: str, entry: _Entry, event_type: str, when: ClinicalTime | None, body: Record
    ) -> CanonicalEvent:
        source, index = self.identity(entry)
        record: Record = {"envelope": _scoped_envelope(self.ctx, source, index, event_type, when)}
        record.update(body)
        return CanonicalEvent(kind, body["patient"]["key"], record)

    # -- references ------------------------------------------------------------------------------------

    def resolve(self, ref: str, holder: _Entry) -> _Entry | None:
        if ref.startswith("#"):
            root = holder
            while root.holder is not None:
                root = root.holder
            for contained in _dicts(root.resource.get("contained")):
                if contained.get("id") == ref[1:] and isinstance(contained.get("resourceType"), str):
                    return _Entry(contained, contained["resourceType"], None, holder=root)
            return None
        hit = self.by_ref.get(ref)
        if hit is not None:
            return hit
        parsed = _parse_reference(ref)
        return self.by_ref.get(f"{parsed[0]}/{parsed[1]}") if parsed else None

    def referenced(self, value: Any, holder: _Entry, rtype: str) -> tuple[Record | None, _Entry | None]:
        """(the Reference, the entry it resolves to when that entry is a `rtype`)."""
        ref = _dict(value)
        if ref is None:
            return None, None
        text = _str(ref.get("reference"))
        target = self.resolve(text, holder) if text else None
        return ref, target if target is not None and target.rtype == rtype else None

    # -- time --------------------------------------------------------------------------------------------

    def time(self, value: Any, location: str) -> ClinicalTime | None:
        text = _str(value)
        if text is None:
            return None
        try:
            return parse_fhir_datetime(text, self.options.timezone)
        except TimeFormatError as exc:
            raise MappingError(
                ReasonCode.BAD_TIME,
                f"{location} is not a valid FHIR date/time: {exc}",
                location,
                "FHIR dateTime",
            ) from None

    def date_text(self, value: Any, location: str) -> str | None:
        """A calendar date at the precision sent; a dateTime is read as a date in the hospital's zone.

        Birth and death dates are calendar dates: 'YYYY', 'YYYY-MM' and 'YYYY-MM-DD' travel as sent
        (converting them through UTC could move them a day), only a full dateTime is reduced to its date.
        """
        text = _str(value)
        if text is None:
            return None
        when = self.time(text, location)
        if when is None or "T" not in text:
            return text.strip() if when is not None else None
        return when.instant.astimezone(self.options.timezone).date().isoformat()

    def period(self, value: Any, location: str) -> tuple[ClinicalTime | None, ClinicalTime | None]:
        period = _dict(value) or {}
        return self.time(period.get("start"), f"{location}.start"), self.time(
            period.get("end"), f"{location}.end"
        )

    # -- identities --------------------------------------------------------------------------------------

    def local_id(self, ident: Record) -> LocalId | None:
        value = _str(ident.get("value"))
        if value is None or ident.get("use") == "old":
            return None
        value = value.strip()
        system = _str(ident.get("system"))
        type_codes = [str(c["code"]) for c in _codings(ident.get("type"))]
        type_code = "PI" if "PI" in type_codes else (type_codes[0] if type_codes else None)
        if system is None:
            # An identifier without a system is scoped by whoever sent it.
            return LocalId(value, self.ctx.facility, None, type_code)
        if system.startswith("urn:oid:"):
            return LocalId(value, None, oid_of(system), type_code)
        return LocalId(value, system, None, type_code)

    def patient_identity(self, entry: _Entry) -> Record:
        cached = self._patients.get(entry)
        if cached is not None:
            return cached
        resource = entry.resource
        ids = [i for i in map(self.local_id, _dicts(resource.get("identifier"))) if i is not None]
        has_ins = any(i.authority_oid in INS_OIDS for i in ids)
        status = _identity_status(resource, has_ins)
        try:
            ref = patient_ref(ids, [status] if status else [])
        except IdentityError as exc:
            if exc.code == "no_local_identifier":
                raise MappingError(
                    ReasonCode.NO_PATIENT,
                    "no hospital patient identifier (IPP) besides the INS",
                    "Patient.identifier",
                    "IPP required",
                ) from None
            raise MappingError(exc.code, str(exc), "Patient.identifier", "INS") from None
        self._patients[entry] = ref
        return ref

    def patient_from_reference(self, value: Any, holder: _Entry, location: str) -> Record:
        """The PatientRef of a Reference(Patient), in order: the Patient in the Bundle (or contained), the
        reference's logical identifier, the identifier another reference of the payload gave for the same
        Patient, then the reference itself as a facility-scoped key (docs/mapping-fhir.md, linkage)."""
        ref = _dict(value)
        if ref is None:
            raise MappingError(
                ReasonCode.NO_PATIENT, f"{location} is missing", location, "a Reference(Patient)"
            )
        text = _str(ref.get("reference"))
        declared = _str(ref.get("type"))
        if declared is not None and declared != "Patient":
            raise MappingError(
                ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, _LINKAGE
            )
        if text:
            target = self.resolve(text, holder)
            if target is not None:
                if target.rtype != "Patient":
                    raise MappingError(
                        ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, _LINKAGE
                    )
                return self.patient_identity(target)
        parsed = _parse_reference(text) if text else None
        alias = (
            self.patient_aliases.get(f"Patient/{parsed[1]}") if parsed and parsed[0] == "Patient" else None
        )
        for ident in (_dict(ref.get("identifier")), alias):
            local = self.local_id(ident) if ident is not None else None
            if local is not None:
                try:
                    return patient_ref([local])
                except IdentityError as exc:
                    if exc.code != "no_local_identifier":  # an INS alone: try the next way
                        raise MappingError(exc.code, str(exc), f"{location}.identifier", "INS") from None
        if parsed is None:
            raise MappingError(
                ReasonCode.NO_PATIENT,
                f"{location} cannot be resolved to a patient identifier",
                location,
                _LINKAGE,
            )
        if parsed[0] != "Patient":
            raise MappingError(
                ReasonCode.NO_PATIENT, f"{location} does not reference a Patient", location, _LINKAGE
            )
        return patient_ref([LocalId(f"Patient/{parsed[1]}", self.ctx.facility, None)])

    def encounter_identity(self, entry: _Entry) -> Record | None:
        resource = entry.resource
        chosen: Record | None = None
        for ident in _dicts(resource.get("identifier")):
            if _str(ident.get("value")) is None or ident.get("use") == "old":
                continue
            if "VN" in {c["code"] for c in _codings(ident.get("type"))}:
                chosen = ident
                break
            chosen = chosen or ident
        if chosen is not None:
            local = self.local_id(chosen)
            if local is not None:
                return {
                    "visit_number": local.value,
                    "authority_name": local.authority_name,
                    "authority_oid": local.authority_oid,
                }
        rid = _str(resource.get("id"))
        if rid:
            return {
                "visit_number": f"Encounter/{rid}",
                "authority_name": self.ctx.facility,
                "authority_oid": None,
            }
        if entry.full_url and entry.full_url.startswith("urn:uuid:"):
            return {
                "visit_number": entry.full_url,
                "authority_name": self.ctx.facility,
                "authority_oid": None,
            }
        return None

    def encounter_from_reference(self, value: Any, holder: _Entry) -> Record | None:
        ref, target = self.referenced(value, holder, "Encounter")
        if ref is None:
            return None
        if target is not None:
            return self.encounter_identity(target)
        ident = _dict(ref.get("identifier"))
        local = self.local_id(ident) if ident is not None else None
        if local is not None:
            return {
                "visit_number": local.value,
                "authority_name": local.authority_name,
                "authority_oid": local.authority_oid,
            }
        text = _str(ref.get("reference"))
        parsed = _parse_reference(text) if text else None
        if parsed is None or parsed[0] != "Encounter":
            return None
        return {
            "visit_number": f"Encounter/{parsed[1]}",
            "authority_name": self.ctx.facility,
            "authority_oid": None,
        }

    def organization(self, value: Any, holder: _Entry) -> Record | None:
        ref, target = self.referenced(value, holder, "Organization")
        if ref is None:
            return None
        if target is not None:
            org = target.resource
            idents = [i for i in _dicts(org.get("identifier")) if _str(i.get("value"))]
            finess = next((i for i in idents if oid_of(_str(i.get("system")) or "") == FINESS_OID), None)
            ident = finess or (idents[0] if idents else None)
            return common.organization(
                _str(ident.get("value")) if ident else None,
                _str(ident.get("system")) if ident else None,
                _str(org.get("name")) or _str(ref.get("display")),
            )
        text = _str(ref.get("reference"))
        parsed = _parse_reference(text) if text else None
        declared = _str(ref.get("type"))
        if (parsed is not None and parsed[0] != "Organization") or (declared and declared != "Organization"):
            return None
        ident = _dict(ref.get("identifier")) or {}
        if _str(ident.get("value")):
            return common.organization(
                _str(ident.get("value")), _str(ident.get("system")), _str(ref.get("display"))
            )
        return common.organization(
            f"Organization/{parsed[1]}" if parsed else None, None, _str(ref.get("display"))
        )

    def first_organization(self, refs: Any, holder: _Entry) -> Record | None:
        for ref in _dicts(refs):
            org = self.organization(ref, holder)
            if org is not None:
                return org
        return None

    def device(self, value: Any, holder: _Entry) -> Record | None:
        ref, target = self.referenced(value, holder, "Device")
        if ref is None:
            return None
        if target is not None:
            dev = target.resource
            ident = next((i for i in _dicts(dev.get("identifier")) if _str(i.get("value"))), None)
            udi = next((u for u in _dicts(dev.get("udiCarrier")) if _str(u.get("deviceIdentifier"))), None)
            names = [n for n in _dicts(dev.get("deviceName")) if _str(n.get("name"))]
            if ident is not None:
                dev_id, id_system = _str(ident.get("value")), _str(ident.get("system"))
            elif _str(dev.get("serialNumber")):
                dev_id, id_system = _str(dev.get("serialNumber")), "serial"
            elif udi is not None:
                dev_id, id_system = _str(udi.get("deviceIdentifier")), "UDI"
            else:
                dev_id, id_system = f"Device/{_str(dev.get('id')) or target.position}", None
            return {
                "id": dev_id,
                "id_system": id_system,
                "model": _str(dev.get("modelNumber")) or (_str(names[0].get("name")) if names else None),
                "manufacturer": _str(dev.get("manufacturer")),
                "hierarchy": None,
            }
        ident = _dict(ref.get("identifier")) or {}
        if _str(ident.get("value")):
            return {
                "id": _str(ident.get("value")),
                "id_system": _str(ident.get("system")),
                "model": _str(ref.get("display")),
                "manufacturer": None,
                "hierarchy": None,
            }
        text = _str(ref.get("reference"))
        parsed = _parse_reference(text) if text else None
        if parsed is None or parsed[0] != "Device":
            return None
        return {
            "id": f"Device/{parsed[1]}",
            "id_system": None,
            "model": _str(ref.get("display")),
            "manufacturer": None,
            "hierarchy": None,
        }

    # -- quantities --------------------------------------------------------------------------------------

    def quantity(self, value: Any, location: str, like: Record | None = None) -> Record | None:
        """A canonical Quantity: UCUM codes kept (and converted when the options ask), free units mapped.

        ``like`` supplies the unit of a reference-range bound that gives none, so a bound is converted
        exactly as the value it frames.
        """
        q = _dict(value)
        if q is None:
            return None
        number = _number(q.get("value"), f"{location}.value")
        if number is None:
            return None
        comparator = _str(q.get("comparator"))
        unit_text, code, system = _str(q.get("unit")), _str(q.get("code")), _str(q.get("system"))
        if like is not None and not (unit_text or code):
            unit_text, code, system = _str(like.get("unit")), _str(like.get("code")), _str(like.get("system"))
        conversions = self.options.unit_conversions
        if system == UCUM_SYSTEM and code:
            original = unit_text or code
            target = conversions.get(code)
            if target is not None:
                converted = quantity(number, code, {code: target})
                if converted.unit == target and converted.unit_system == UCUM_SYSTEM:
                    return Quantity(converted.value, target, UCUM_SYSTEM, original).as_record(comparator)
            return Quantity(number, code, UCUM_SYSTEM, original).as_record(comparator)
        text = unit_text or code
        if text is None:
            return Quantity(number, None, None, None).as_record(comparator)
        return quantity(number, text, conversions).as_record(comparator)

    def reference_range(self, ranges: Any, location: str, like: Record | None) -> Record | None:
        for i, rng in enumerate(_dicts(ranges)):
            low = self.quantity(rng.get("low"), f"{location}[{i}].low", like)
            high = self.quantity(rng.get("high"), f"{location}[{i}].high", like)
            text = _str(rng.get("text"))
            if low is None and high is None and text is None:
                continue
            return {
                "low": low["value"] if low else None,
                "high": high["value"] if high else None,
                "text": text,
            }
        return None


def _ext_code(ext: Record) -> str | None:
    """The code an extension carries, whichever value[x] the sender chose for it."""
    code = _str(ext.get("valueCode")) or _str(ext.get("valueString"))
    if code:
        return code
    coding = _coding(ext.get("valueCoding")) or _first_coding(ext.get("valueCodeableConcept"))
    return str(coding["code"]) if coding else None


def _identity_status(resource: Record, has_ins: bool) -> str | None:
    """The canonical identity status (PID-32 vocabulary) from FR Core's identity-reliability extension.

    FR Core's code system (HL7 table 0445 as published by Interop'Santé) has no QUAL code: a qualified
    identity (RNIV) is a *validated* one (VALI) whose INS was obtained from the INSi teleservice
    (``methodCollection`` INSI). That combination, with an INS present, becomes QUAL; a QUAL sent as such
    (PAM France vocabulary, allowed by the extensible binding) stays QUAL. Any other status or attribute
    next to it (DOUT, FICT, USUR...) forbids qualification and is what is reported.
    """
    statuses: list[str] = []
    methods: list[str] = []
    for ext in _dicts(resource.get("extension")):
        if ext.get("url") != FR_CORE_IDENTITY_RELIABILITY:
            continue
        for sub in _dicts(ext.get("extension")):
            code = _ext_code(sub)
            if code is None:
                continue
            if sub.get("url") == "identityStatus":
                statuses.append(code.strip().upper())
            elif sub.get("url") == "methodCollection":
                methods.append(code.strip().upper())
        direct = _ext_code(ext)  # a simple-valued variant seen in the wild
        if direct:
            statuses.append(direct.strip().upper())
    if not statuses:
        return None
    trusted = set(statuses) <= {"VALI", "QUAL"}
    if trusted and ("QUAL" in statuses or ("INSI" in methods and has_ins)):
        return "QUAL"
    return next((s for s in statuses if s not in ("VALI", "QUAL")), statuses[0])


def _status(resource: Record, rtype: str) -> str:
    status = resource.get("status")
    if status is None:
        return "unknown"  # absent with a data-absent extension (_status): FHIR allows it
    if not isinstance(status, str) or status not in _STATUSES[rtype]:
        raise MappingError(
            ReasonCode.INVALID_RESOURCE,
            f"{rtype}.status: code outside the required value set",
            f"{rtype}.status",
            "required binding",
        )
    return str(status)


def _observation_code(concept: Any, location: str) -> tuple[Record, list[Record]]:
    codings = _codings(concept)
    if not codings:
        raise MappingError(
            ReasonCode.NO_CODE, f"{location} has no coding with a code", location, "coded observation"
        )
    primary, others, standard = _split_primary(codings, common.STANDARD_OBSERVATION_SYSTEMS)
    code = common.observation_code(primary["system"], primary["code"], primary["display"], not standard)
    return code, others


# --- one mapper per resource type -------------------------------------------------------------------------


def _map_patient(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    names = []
    for name in _dicts(r.get("name")):
        family = _str(name.get("family"))
        given = [g.strip() for g in name.get("given") or () if _str(g)]
        if family or given:
            names.append(
                {"use": _str(name.get("use")), "family": family.strip() if family else None, "given": given}
            )
    addresses = []
    for addr in _dicts(r.get("address")):
        lines = [line.strip() for line in addr.get("line") or () if _str(line)]
        record = {
            "use": _str(addr.get("use")),
            "lines": lines,
            "city": _str(addr.get("city")),
            "postal_code": _str(addr.get("postalCode")),
            "country": _str(addr.get("country")),
        }
        if lines or record["city"] or record["postal_code"] or record["country"]:
            addresses.append(record)
    telecom = []
    for cp in _dicts(r.get("telecom")):
        value = _str(cp.get("value"))
        if value:
            telecom.append(
                {
                    "system": _str(cp.get("system")) or "other",
                    "value": value.strip(),
                    "use": _str(cp.get("use")),
                }
            )
    gender = r.get("gender")
    if gender is not None and (not isinstance(gender, str) or gender not in _GENDERS):
        raise MappingError(
            ReasonCode.INVALID_RESOURCE,
            "Patient.gender: code outside the required value set",
            "Patient.gender",
            "required binding",
        )
    deceased = _bool(r.get("deceasedBoolean"))
    death_date = doc.date_text(r.get("deceasedDateTime"), "Patient.deceasedDateTime")
    if death_date is not None:
        deceased = True
    merged_into = None
    for i, link in enumerate(_dicts(r.get("link"))):
        if link.get("type") == "replaced-by":
            merged_into = doc.patient_from_reference(link.get("other"), entry, f"Patient.link[{i}].other")[
                "key"
            ]
            break
    meta = _dict(r.get("meta")) or {}
    body: Record = {
        "patient": doc.patient_identity(entry),
        "names": names,
        "birth_date": doc.date_text(r.get("birthDate"), "Patient.birthDate"),
        "birth_place_code": _birth_place_code(r),
        "sex": gender,
        "addresses": addresses,
        "telecom": telecom,
        "deceased": deceased,
        "death_date": death_date,
        "marital_status": _first_code(r.get("maritalStatus")),
        "merged_into": merged_into,
    }
    when = doc.time(meta.get("lastUpdated"), "Patient.meta.lastUpdated")
    return doc.event("patient", entry, "patient.updated", when, body)


def _birth_place_code(resource: Record) -> str | None:
    """The INSEE code of the birth place (an INS trait), from FR Core's coded birth-place address."""
    for ext in _dicts(resource.get("extension")):
        if ext.get("url") != BIRTH_PLACE:
            continue
        address = _dict(ext.get("valueAddress")) or {}
        for sub in _dicts(address.get("extension")):
            if sub.get("url") == FR_CORE_INSEE_CODE:
                return _ext_code(sub)
    return None


def _location_record(doc: _Doc, items: list[tuple[Record, _Entry]]) -> Record | None:
    """Encounter.location entries (ward, room, bed, each its own entry) folded into one Location record."""
    levels: dict[str, str | None] = {
        "service": None,
        "room": None,
        "bed": None,
        "facility": None,
        "medical_unit": None,
    }
    slot_of = {
        "wa": "service",
        "ward": "service",
        "ro": "room",
        "bd": "bed",
        "si": "facility",
        "bu": "facility",
    }
    for item, holder in items:
        ref, target = doc.referenced(item.get("location"), holder, "Location")
        if ref is None:
            continue
        physical = _first_code(item.get("physicalType"))
        name = _str(ref.get("display"))
        if target is not None:
            loc = target.resource
            physical = physical or _first_code(loc.get("physicalType"))
            ident = next((i for i in _dicts(loc.get("identifier")) if _str(i.get("value"))), None)
            name = _str(loc.get("name")) or (_str(ident.get("value")) if ident else None) or name
        slot = slot_of.get((physical or "").lower(), "service")
        if name and levels[slot] is None:
            levels[slot] = name.strip()
    return levels if any(levels.values()) else None


def _map_encounter(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    visit = doc.encounter_identity(entry)
    if visit is None:
        raise MappingError(
            ReasonCode.NO_VISIT,
            "Encounter has neither an identifier nor an id",
            "Encounter.identifier",
            "visit number",
        )
    status = _status(r, "Encounter")
    start, end = doc.period(r.get("period"), "Encounter.period")
    current: list[tuple[Record, _Entry]] = []
    prior: list[tuple[Record, _Entry]] = []
    for item in _dicts(r.get("location")):
        state = item.get("status")
        if state == "completed":
            prior = [(item, entry)]
        elif state in (None, "active", "reserved"):
            current.append((item, entry))
    hospitalization = _dict(r.get("hospitalization")) or {}
    encounter_class = _coding(r.get("class"))
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Encounter.subject"),
        "encounter": visit,
        "status": status,
        "encounter_class": encounter_class["code"] if encounter_class else None,
        "movement": None,
        "location": _location_record(doc, current),
        "prior_location": _location_record(doc, prior),
        "period_start": start.instant if start else None,
        "period_end": end.instant if end else None,
        "admit_source": _first_coding(hospitalization.get("admitSource")),
        "discharge_disposition": _first_coding(hospitalization.get("dischargeDisposition")),
        "service_provider": doc.organization(r.get("serviceProvider"), entry),
    }
    when = end if status == "finished" and end is not None else start
    return doc.event("encounter", entry, "encounter.updated", when, body)


def _value_fields(doc: _Doc, r: Record, location: str) -> Record:
    """value[x] and dataAbsentReason of an Observation or a component, in canonical form."""
    fields: Record = {
        "value_quantity": None,
        "value_code": None,
        "value_string": None,
        "value_boolean": None,
        "data_absent_reason": _first_code(r.get("dataAbsentReason")),
    }
    if "valueQuantity" in r:
        fields["value_quantity"] = doc.quantity(r.get("valueQuantity"), f"{location}.valueQuantity")
    elif "valueCodeableConcept" in r:
        concept = _dict(r.get("valueCodeableConcept")) or {}
        fields["value_code"] = _first_coding(concept)
        if fields["value_code"] is None:
            fields["value_string"] = _str(concept.get("text"))
    elif "valueString" in r:
        fields["value_string"] = _str(r.get("valueString"))
    elif "valueBoolean" in r:
        fields["value_boolean"] = _bool(r.get("valueBoolean"))
    elif "valueInteger" in r:
        number = _number(r.get("valueInteger"), f"{location}.valueInteger")
        if number is not None:
            fields["value_quantity"] = Quantity(number, None, None, None).as_record()
    elif "valueDateTime" in r or "valueTime" in r:
        fields["value_string"] = _str(r.get("valueDateTime")) or _str(r.get("valueTime"))
    else:
        for name in ("valueRange", "valueRatio", "valueSampledData", "valuePeriod"):
            if name in r:
                raise MappingError(
                    ReasonCode.UNSUPPORTED_VALUE,
                    f"{location}.{name} has no canonical form",
                    f"{location}.{name}",
                    "canonical Observation value",
                )
    return fields


def _interpretation(concepts: Any) -> list[Record]:
    return [c for concept in _dicts(concepts) for c in _codings(concept)]


def _map_observation(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "Observation")
    code, others = _observation_code(r.get("code"), "Observation.code")
    values = _value_fields(doc, r, "Observation")
    like = _dict(r.get("valueQuantity"))
    components = []
    for i, comp in enumerate(_dicts(r.get("component"))):
        where = f"Observation.component[{i}]"
        comp_code, _ = _observation_code(comp.get("code"), f"{where}.code")
        comp_values = _value_fields(doc, comp, where)
        components.append(
            {
                "code": comp_code,
                **{
                    k: comp_values[k]
                    for k in ("value_quantity", "value_code", "value_string", "value_boolean")
                },
                "data_absent_reason": comp_values["data_absent_reason"],
                "reference_range": doc.reference_range(
                    comp.get("referenceRange"), f"{where}.referenceRange", _dict(comp.get("valueQuantity"))
                ),
                "interpretation": _interpretation(comp.get("interpretation")),
            }
        )
    when = _effective(doc, r, "Observation")
    issued = doc.time(r.get("issued"), "Observation.issued")
    _, specimen = doc.referenced(r.get("specimen"), entry, "Specimen")
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept, OBSERVATION_CATEGORY)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Observation.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "status": status,
        "category": category,
        "code": code,
        "additional_codings": others,
        **values,
        "reference_range": doc.reference_range(r.get("referenceRange"), "Observation.referenceRange", like),
        "interpretation": _interpretation(r.get("interpretation")),
        "method": _first_coding(r.get("method")),
        "device": doc.device(r.get("device"), entry),
        "effective_time": when.instant if when else None,
        "effective_time_precision": when.precision if when else None,
        "issued": issued.instant if issued else None,
        "components": components,
        "specimen_type": _first_coding(specimen.resource.get("type")) if specimen is not None else None,
        "performer_organization": doc.first_organization(r.get("performer"), entry),
    }
    event_type = {
        "amended": "observation.corrected",
        "corrected": "observation.corrected",
        "cancelled": "observation.cancelled",
        "entered-in-error": "observation.cancelled",
    }.get(status, "observation.recorded")
    return doc.event("observation", entry, event_type, when or issued, body)


def _effective(doc: _Doc, r: Record, rtype: str) -> ClinicalTime | None:
    if "effectiveDateTime" in r:
        return doc.time(r.get("effectiveDateTime"), f"{rtype}.effectiveDateTime")
    if "effectiveInstant" in r:
        return doc.time(r.get("effectiveInstant"), f"{rtype}.effectiveInstant")
    if "effectivePeriod" in r:
        start, end = doc.period(r.get("effectivePeriod"), f"{rtype}.effectivePeriod")
        return start or end
    return None


def _tumour(r: Record, codings: list[Record]) -> Record | None:
    """CIM-O-3 topography and morphology, wherever R4 senders put them (see docs/mapping-fhir.md)."""
    topography = None
    for site in _dicts(r.get("bodySite")):
        topography = next((c for c in _codings(site) if _norm_system(c["system"]) in _ICDO3_SYSTEMS), None)
        if topography:
            break
    morphology = None
    for ext in _dicts(r.get("extension")):
        if ext.get("url") == MCODE_HISTOLOGY:
            found = _codings(ext.get("valueCodeableConcept"))
            morphology = next((c for c in found if _norm_system(c["system"]) in _ICDO3_SYSTEMS), None) or (
                found[0] if found else None
            )
            break
    for c in codings:
        if _norm_system(c["system"]) not in _ICDO3_SYSTEMS:
            continue
        if topography is None and _TOPOGRAPHY.fullmatch(str(c["code"])):
            topography = c
        elif morphology is None and _MORPHOLOGY.fullmatch(str(c["code"])):
            morphology = c
    stage = None
    for st in _dicts(r.get("stage")):
        summary = _dict(st.get("summary")) or {}
        text = _first_code(summary) or _str(summary.get("text"))
        if text:
            stage = {"classification": None, "type": None, "summary": text, "t": None, "n": None, "m": None}
            break
    if topography is None and morphology is None and stage is None:
        return None
    return {"topography": topography, "morphology": morphology, "stage": stage}


def _map_condition(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    codings = _codings(r.get("code"))
    if not codings:
        raise MappingError(
            ReasonCode.NO_CODE,
            "Condition.code has no coding with a code",
            "Condition.code",
            "CIM-10 diagnosis",
        )
    primary, others, _ = _split_primary(codings, _CIM10_SYSTEMS | _cim10_option_systems(doc.options))
    onset = None
    if "onsetDateTime" in r:
        onset = doc.time(r.get("onsetDateTime"), "Condition.onsetDateTime")
    elif "onsetPeriod" in r:
        onset = doc.period(r.get("onsetPeriod"), "Condition.onsetPeriod")[0]
    recorded = doc.time(r.get("recordedDate"), "Condition.recordedDate")
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Condition.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "additional_codings": others,
        "category": category,
        "diagnosis_role": None,
        "clinical_status": _first_code(r.get("clinicalStatus")),
        "verification_status": _first_code(r.get("verificationStatus")),
        "onset_time": onset.instant if onset else None,
        "onset_time_precision": onset.precision if onset else None,
        "recorded_time": recorded.instant if recorded else None,
        "tumour": _tumour(r, codings),
    }
    return doc.event("condition", entry, "condition.recorded", onset or recorded, body)


def _cim10_option_systems(options: MappingOptions) -> frozenset[str]:
    return frozenset(_norm_system(options.code_systems.get(name)) for name in ("CIM10", "CIM-10", "I10"))


def _map_procedure(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "Procedure")
    codings = _codings(r.get("code"))
    if not codings:
        raise MappingError(
            ReasonCode.NO_CODE, "Procedure.code has no coding with a code", "Procedure.code", "CCAM act"
        )
    ccam = _CCAM_SYSTEMS | {_norm_system(doc.options.code_systems.get("CCAM"))}
    primary, others, _ = _split_primary(codings, ccam)
    start = end = None
    if "performedDateTime" in r:
        start = doc.time(r.get("performedDateTime"), "Procedure.performedDateTime")
    elif "performedPeriod" in r:
        start, end = doc.period(r.get("performedPeriod"), "Procedure.performedPeriod")
    performer = None
    for perf in _dicts(r.get("performer")):
        performer = doc.organization(perf.get("actor"), entry) or doc.organization(
            perf.get("onBehalfOf"), entry
        )
        if performer:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "Procedure.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "additional_codings": others,
        "activity": None,
        "phase": None,
        "status": status,
        "performed_start": start.instant if start else None,
        "performed_end": end.instant if end else None,
        "performed_time_precision": start.precision if start else None,
        "performer_organization": performer,
    }
    return doc.event("procedure", entry, "procedure.recorded", start or end, body)


def _map_diagnostic_report(doc: _Doc, entry: _Entry) -> CanonicalEvent:
    r = entry.resource
    status = _status(r, "DiagnosticReport")
    codings = _codings(r.get("code"))
    if not codings:
        raise MappingError(
            ReasonCode.NO_CODE,
            "DiagnosticReport.code has no coding with a code",
            "DiagnosticReport.code",
            "coded report",
        )
    primary, _, _ = _split_primary(codings, frozenset({common.LOINC}))
    when = _effective(doc, r, "DiagnosticReport")
    issued = doc.time(r.get("issued"), "DiagnosticReport.issued")
    results = []
    for ref in _dicts(r.get("result")):
        text = _str(ref.get("reference"))
        if text is None:
            continue
        target = doc.resolve(text, entry)
        if target is not None:
            if target.rtype == "Observation" and target.position is not None:
                results.append(doc.event_id(target))
            continue
        parsed = _parse_reference(text)
        if parsed is not None and parsed[0] == "Observation" and parsed[2] is not None:
            results.append(resource_event_id(doc.ctx, parsed[0], parsed[1], parsed[2]))
    category = None
    for concept in _dicts(r.get("category")):
        category = _first_code(concept)
        if category:
            break
    body: Record = {
        "patient": doc.patient_from_reference(r.get("subject"), entry, "DiagnosticReport.subject"),
        "encounter": doc.encounter_from_reference(r.get("encounter"), entry),
        "code": primary,
        "status": status,
        "category": category,
        "effective_time": when.instant if when else None,
        "effective_time_precision": when.precision if when else None,
        "issued": issued.instant if issued else None,
        "result_event_ids": results,
        "conclusion": _str(r.get("conclusion")),
        "conclusion_codes": [c for concept in _dicts(r.get("conclusionCode")) for c in _codings(concept)],
        "performer_organization": doc.first_organization(r.get("performer"), entry),
    }
    event_type = {
        "amended": "diagnostic_report.corrected",
        "corrected": "diagnostic_report.corrected",
        "cancelled": "diagnostic_report.cancelled",
        "entered-in-error": "diagnostic_report.cancelled",
    }.get(status, "diagnostic_report.issued")
    return doc.event("diagnostic_report", entry, event_type, when or issued, body)


_MAPPERS: Final[Mapping[str, Callable[[_Doc, _Entry], CanonicalEvent]]] = {
    "Patient": _map_patient,
    "Encounter": _map_encounter,
    "Observation": _map_observation,
    "Condition": _map_condition,
    "Procedure": _map_procedure,
    "DiagnosticReport": _map_diagnostic_report,
}


# --- deletes --------------------------------------------------------------------------------------------


def _retraction(doc: _Doc, position: int, raw: Record) -> CanonicalEvent | None:
    """A DELETE entry → Retraction DELETE of every event id the mapper can name for that resource.

    Versioned events are named from the deleted version down to version 1 (integer versions) — the
    delete carries that version in request.ifMatch (transaction) or response.etag (history). Events of
    unversioned resources were keyed on their content and cannot be named: target_source_reference
    ('<Type>/<id>') tells consumers what went. The patient is unknown to a stateless mapper: the
    retraction is keyed on the deleted resource reference (docs/mapping-fhir.md).
    """
    location = f"Bundle.entry[{position}].request.url"
    request = _dict(raw.get("request")) or {}
    url = _str(request.get("url"))
    if url is None or "?" in url:
        raise MappingError(
            ReasonCode.UNSUPPORTED_REQUEST,
            "conditional or empty DELETE cannot be resolved to events",
            location,
            "DELETE Type/id",
        )
    parsed = _parse_reference(url.strip())
    if parsed is None:
        raise MappingError(
            ReasonCode.UNSUPPORTED_REQUEST, "DELETE url is not <Type>/<id>", location, "DELETE Type/id"
        )
    rtype, rid, _ = parsed
    if rtype not in MAPPED_TYPES:
        return None  # nothing was ever emitted for it
    response = _dict(raw.get("response")) or {}
    version = _etag_version(request.get("ifMatch")) or _etag_version(response.get("etag"))
    targets: list[str] = []
    if version is not None:
        if version.isdigit() and 0 < int(version) < 10**9:
            last = int(version)
            versions = [str(v) for v in range(max(1, last - _MAX_RETRACTED_VERSIONS + 1), last + 1)]
        else:
            versions = [version]
        targets = [resource_event_id(doc.ctx, rtype, rid, v) for v in versions]
    reference = f"{rtype}/{rid}"
    index = f"deleted/_history/{version}" if version else "deleted"
    patient = patient_ref([LocalId(reference, doc.ctx.facility, None)])
    record: Record = {
        "envelope": _scoped_envelope(doc.ctx, reference, index, "retraction.issued", None),
        "patient": patient,
        "kind": "DELETE",
        "target_event_ids": targets,
        "target_source_reference": reference,
        "retired_patient": None,
        "reason_code": "source-deleted",
    }
    return CanonicalEvent("retraction", patient["key"], record)


# --- entry points ---------------------------------------------------------------------------------------


def _known_type(rtype: str) -> str:
    """The type's name only when FHIR defines it: an arbitrary resourceType string is input text."""
    try:
        get_fhir_model_class(rtype)
    except (ValueError, AttributeError, TypeError):
        return "the payload's resourceType"
    return rtype


def _resource_type(resource: Any, location: str) -> str:
    if not isinstance(resource, dict):
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} is not a JSON object", location, "FHIR JSON resource"
        )
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise MappingError(
            ReasonCode.INVALID_RESOURCE, f"{location} has no resourceType", location, "FHIR JSON resource"
        )
    return rtype


def _map_bundle(bundle: Record, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
    raw_entries = bundle.get("entry")
    entries_in = raw_entries if isinstance(raw_entries, list) else []
    for position, raw in enumerate(entries_in):
        if isinstance(raw, dict) and "resource" in raw:
            _resource_type(raw["resource"], f"Bundle.entry[{position}].resource")
    validate_bundle_shell(bundle)
    start = 0
    if entries_in and bundle.get("type") in ("history", "subscription-notification"):
        first = entries_in[0].get("resource") if isinstance(entries_in[0], dict) else None
        if isinstance(first, dict) and first.get("resourceType") in NOTIFICATION_STATUS_TYPES:
            start = 1  # the notification's status entry; the events follow it
    entries: list[_Entry] = []
    actions: list[tuple[int, Record, _Entry | None]] = []
    carried = 0
    for position in range(start, len(entries_in)):
        raw = entries_in[position]
        request = _dict(raw.get("request")) or {}
        method = request.get("method")
        if method == "DELETE":
            actions.append((position, raw, None))
            continue
        if method == "PATCH":
            raise MappingError(
                ReasonCode.UNSUPPORTED_REQUEST,
                "PATCH cannot be applied without the current resource",
                f"Bundle.entry[{position}].request.method",
                "stateless mapping",
            )
        resource = raw.get("resource")
        if method in ("GET", "HEAD") or resource is None:
            continue  # a read, or an id-only notification entry: fetched by the connector, not mapped here
        rtype = resource["resourceType"]
        if rtype == "OperationOutcome":
            continue  # a searchset's warnings, not data
        carried += 1
        if rtype not in MAPPED_TYPES and rtype not in SUPPORTING_TYPES:
            continue
        validate_resource(resource, rtype, f"Bundle.entry[{position}]: ")
        response = _dict(raw.get("response")) or {}
        entry = _Entry(
            resource, rtype, position, _str(raw.get("fullUrl")), _etag_version(response.get("etag"))
        )
        entries.append(entry)
        if rtype in MAPPED_TYPES:
            actions.append((position, raw, entry))
    doc = _Doc(ctx, options, entries)
    events: list[CanonicalEvent] = []
    for position, raw, action_entry in actions:
        if action_entry is None:
            retraction = _retraction(doc, position, raw)
            if retraction is not None:
                events.append(retraction)
        else:
            events.append(_MAPPERS[action_entry.rtype](doc, action_entry))
    if carried and not any(e is not None for _, _, e in actions) and not events:
        raise MappingError(
            ReasonCode.UNSUPPORTED_RESOURCE,
            "the Bundle holds no resource type this hub maps",
            "Bundle.entry",
            "mapped types",
        )
    return events


def map_fhir(payload: bytes, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
    """Map one raw FHIR JSON payload; raises MappingError with a content-free reason."""
    data = parse_json(payload)
    rtype = _resource_type(data, "payload")
    if rtype == "Bundle":
        return _map_bundle(data, ctx, options)
    if rtype not in MAPPED_TYPES:
        raise MappingError(
            ReasonCode.UNSUPPORTED_RESOURCE,
            f"{_known_type(rtype)} is not a resource type this hub maps",
            "resourceType",
            "mapped types",
        )
    validate_resource(data, rtype, "")
    entry = _Entry(data, rtype, None)
    return [_MAPPERS[rtype](_Doc(ctx, options, [entry]), entry)]
