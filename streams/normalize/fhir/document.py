"""The payload being mapped (:class:`_Doc`): its entries, reference resolution, times, identities, quantities.

One object per payload because references resolve inside it (Bundle entries, contained resources) and the
patient and visit identities derived from them are cached per entry, so every mapper sees the same key for
the same patient. How a reference resolves and links a patient is ``formats/fhir/admission.py``'s, over
the :class:`Scope` built here: the FHIR door decides with the same functions what it may answer 2xx for.
"""

from __future__ import annotations

from typing import Any

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.clinical.identity import IdentityError, LocalId, oid_of, patient_ref
from formats.clinical.times import ClinicalTime, TimeFormatError, parse_fhir_datetime
from formats.clinical.units import MDC_SYSTEM, UCUM_SYSTEM, Quantity, mdc_to_ucum, quantity, ucum_quantity
from formats.fhir.admission import (
    Scope,
    link_patient,
    local_id,
    patient_ids,
    patient_key,
    resolve,
    scope_of,
)
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext
from streams.normalize.fhir.entry import _Entry, _scoped_envelope, _scoped_event_id, _version_index
from streams.normalize.fhir.read import _codings, _dict, _dicts, _number, _parse_reference, _str
from streams.normalize.fhir.vocabulary import FINESS_OID, _identity_status
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError, Rejection


class _Doc:
    """A payload being mapped: its entries, reference resolution and the identities derived from them."""

    def __init__(self, ctx: RawContext, options: MappingOptions, entries: list[_Entry]) -> None:
        self.ctx = ctx
        self.options = options
        # The payload's resources by fullUrl and <Type>/<id>, and the identifiers other references gave
        # for a Patient/<id> (one key per patient within a message): what the door's check saw too.
        self.scope: Scope[_Entry] = scope_of(entries, ctx.facility)
        # Keyed by the entry object itself (identity hash): holding it keeps it alive, so a contained
        # resource resolved on the fly can never hand its cache slot to another one (as id() could).
        self._patients: dict[_Entry, Record] = {}
        self._identities: dict[_Entry, tuple[str, str]] = {}
        # Parts left out while the rest is mapped (an INS failing its key check next to an IPP).
        self.dropped: list[Rejection] = []

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
            reused = self.ctx.attributes.get("content_digest") if version else None
            if reused:  # the door saw this version id before with other bytes: keep both apart
                found = (found[0], f"{found[1]}#{reused}")
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

    @staticmethod
    def _root(holder: _Entry) -> _Entry:
        while holder.holder is not None:
            holder = holder.holder
        return holder

    def resolve(self, ref: str, holder: _Entry) -> _Entry | None:
        root = self._root(holder)
        found = resolve(ref, root.resource, self.scope)
        if found is None:
            return None
        resource, rtype, hit = found
        return hit if hit is not None else _Entry(resource, rtype, None, holder=root)

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
        return local_id(ident, self.ctx.facility)

    def _drop_ins(self, errors: list[IdentityError], location: str) -> None:
        for exc in errors:
            rejection = Rejection(exc.code, f"{exc}; the INS is left out, the IPP kept", location, "INS")
            if rejection not in self.dropped:
                self.dropped.append(rejection)

    def patient_identity(self, entry: _Entry) -> Record:
        cached = self._patients.get(entry)
        if cached is not None:
            return cached
        ids, has_ins = patient_ids(entry.resource, self.ctx.facility)
        status = _identity_status(entry.resource, has_ins)
        dropped: list[IdentityError] = []
        ref = patient_key(ids, has_ins, [status] if status else [], dropped)
        self._drop_ins(dropped, "Patient.identifier")
        self._patients[entry] = ref
        return ref

    def patient_from_reference(self, value: Any, holder: _Entry, location: str) -> Record:
        """The PatientRef of a Reference(Patient), linked as ``admission.link_patient`` says (the order
        is in docs/mapping-fhir.md, linkage); a Patient of the payload gives its own, cached, identity."""
        root = self._root(holder)
        link = link_patient(value, root.resource, location, self.scope)
        if link.target is not None:
            resource, hit = link.target
            return self.patient_identity(
                hit if hit is not None else _Entry(resource, "Patient", None, holder=root)
            )
        if link.dropped is not None:
            self._drop_ins([link.dropped], f"{location}.identifier")
        if link.patient is not None:
            return link.patient
        assert link.scoped is not None  # a Link names its patient one way or another
        return patient_ref([link.scoped])

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
        ucum = mdc_to_ucum(code, unit_text) if system == MDC_SYSTEM else None
        if ucum is not None:  # IEEE 11073 units, through the table the HL7 path uses for OBX-6 ^MDC
            return ucum_quantity(number, ucum, unit_text or code, conversions).as_record(comparator)
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
