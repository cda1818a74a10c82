"""What one mapping run shares: delimiters, context, options, the time cache and the event envelope.

It exists so that every section (patient, encounter, merges, results) reads times, identities and codes
through the same cache and the same rejection rules, and so that the envelope of a message is built
once and copied for its other events; keeping it out of the sections lets them depend on it without
depending on each other.
"""

from __future__ import annotations

from typing import Final

from formats.clinical.identity import IdentityError, LocalId, patient_ref
from formats.clinical.times import (
    ClinicalTime,
    TimeFormatError,
    fast_hl7_date_text,
    fast_hl7_ts,
    hl7_date_text,
    parse_hl7_ts,
)
from formats.hl7.er7 import Message
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext, envelope, event_id
from streams.normalize.hl7.fields import Record, _first, _first_rep, _hd, _hd_in_component, _leaves
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, Mapped, MappingError, Rejection

# Highest field number read per segment: segments are padded to it once so fields index directly.
_PID_SIZE: Final = 32
_PV1_SIZE: Final = 45
_EVN_SIZE: Final = 6
_ZBE_SIZE: Final = 9
_MRG_SIZE: Final = 7
_OBR_SIZE: Final = 25
_OBX_SIZE: Final = 23
_NTE_SIZE: Final = 3
_SPM_SIZE: Final = 4
_DG1_SIZE: Final = 21  # DG1-21 diagnosis action code (v2.5)
_PR1_SIZE: Final = 20  # PR1-20 procedure action code (v2.5)

_MDC_SYSTEM_NAME: Final = "MDC"
_OID_URI: Final = "urn:ietf:rfc:3986"


class _Mapping:
    """What the functions of one mapping share: delimiters, context, options and a time cache.

    Times repeat inside a message (every OBX of a panel has the same OBX-14), so each distinct text is
    parsed once per message.
    """

    __slots__ = (
        "ctx",
        "d",
        "dropped",
        "first_envelope",
        "mdc",
        "message",
        "options",
        "scope",
        "systems",
        "times",
    )

    def __init__(self, message: Message, ctx: RawContext, options: MappingOptions) -> None:
        self.message = message
        self.d = message.delimiters
        self.ctx = ctx
        self.options = options
        self.systems = options.code_systems
        self.mdc = self.system_uri(_MDC_SYSTEM_NAME)
        self.times: dict[str, ClinicalTime | None] = {}
        self.first_envelope: Record | None = None
        # Parts of the message left out while the rest is mapped (a partial mapping, see result.Mapped).
        self.dropped: list[Rejection] = []
        self.scope: tuple[str | None, str | None] | None = None

    def drop(self, rejection: Rejection) -> None:
        if rejection not in self.dropped:
            self.dropped.append(rejection)

    def result(self, events: list[CanonicalEvent]) -> Mapped:
        return Mapped(events, self.dropped)

    def time(self, raw: str, location: str) -> ClinicalTime | None:
        """A TS/DTM field (first component) as UTC + precision; a malformed one rejects the message."""
        if not raw:
            return None
        value = _first(raw, self.d)
        if not value:
            return None
        try:
            return self.times[value]
        except KeyError:
            pass
        zone = self.options.timezone
        try:
            parsed = fast_hl7_ts(value, zone) or parse_hl7_ts(value, zone)
        except TimeFormatError as exc:
            raise MappingError(
                ReasonCode.BAD_TIME, f"{location} is not a valid HL7 date/time: {exc}", location, "HL7 DTM"
            ) from None
        self.times[value] = parsed
        return parsed

    def date_text(self, raw: str, location: str) -> str | None:
        if not raw:
            return None
        value = _first(raw, self.d)
        try:
            return fast_hl7_date_text(value) or hl7_date_text(value)
        except TimeFormatError as exc:
            raise MappingError(
                ReasonCode.BAD_TIME, f"{location} is not a valid HL7 date: {exc}", location, "HL7 DT"
            ) from None

    def system_uri(self, name: str) -> str | None:
        """The canonical URI of a CWE-3 coding system name; an unknown name is kept as sent."""
        if not name:
            return None
        systems = self.systems
        return systems.get(name) or systems.get(name.upper()) or name

    def known(self, name: str) -> bool:
        return bool(name) and (name in self.systems or name.upper() in self.systems)

    def event(
        self, kind: str, index: str, event_type: str, when: ClinicalTime | None, record: Record
    ) -> CanonicalEvent:
        """Fill the envelope slot the caller left first in ``record`` (so fields stay in schema order).

        Only the first event of a message gets a fresh :func:`envelope`; the next ones copy it and
        change what differs per event, which halves the cost on a results message with many OBX. The
        copies share the ``source`` and ``lineage`` sub-dicts: records are not to be mutated in place.
        """
        key = f"{event_type}@{index}"
        first = self.first_envelope
        if first is None:
            env = self.first_envelope = envelope(self.ctx, key, event_type, when)
        else:
            env = first.copy()
            env["event_id"] = event_id(self.ctx, key)
            env["event_type"] = event_type
            env["event_time"] = when.instant if when else None
            env["event_time_precision"] = when.precision if when else None
        record["envelope"] = env
        return CanonicalEvent(kind, record["patient"]["key"], record)

    # -- identity ------------------------------------------------------------------------------------

    def sender_scope(self) -> tuple[str | None, str | None]:
        """(namespace, OID) of the sending facility (MSH-4), the authority of identifiers sent without one.

        The namespace comes first because it is what the door records as the sender
        (``source_facility``) and what the FHIR mapper scopes unqualified identifiers by, so the same
        hospital gets the same key through either door.
        """
        if self.scope is None:
            msh = self.message.segment("MSH")
            msh_fields = msh.raw.split(self.d.field) if msh is not None else []
            raw = msh_fields[3] if len(msh_fields) > 3 else ""  # MSH-1 is the separator: MSH-n is item n - 1
            c = _leaves(_first_rep(raw, self.d), self.d, 3)
            name, oid = _hd(c[0].strip(), c[1].strip(), c[2].strip())
            self.scope = (name, None) if name else (None, oid)
        return self.scope

    def local_ids(self, raw: str) -> list[LocalId]:
        d = self.d
        ids: list[LocalId] = []
        for rep in raw.split(d.repetition):
            if not rep:
                continue
            comps = rep.split(d.component)
            value = _first(comps[0], d).strip()
            if not value:
                continue
            n = len(comps)
            name, oid = _hd_in_component(comps[3], d) if n > 3 else (None, None)
            if name is None and oid is None:
                # No assigning authority (CX-4): the number is the sender's, two hospitals may both use it.
                name, oid = self.sender_scope()
            type_code = _first(comps[4], d) if n > 4 else ""
            ids.append(LocalId(value, name, oid, type_code or None))
        return ids

    def patient(self, id_field: str, reliability_field: str, location: str) -> Record:
        """The PatientRef of a CX list; an INS failing its key check next to an IPP is dropped and
        reported as a partial mapping rather than losing the whole message."""
        d = self.d
        reliability = (
            [_first(rep, d) for rep in reliability_field.split(d.repetition)] if reliability_field else []
        )
        dropped: list[IdentityError] = []
        try:
            ref = patient_ref(self.local_ids(id_field), reliability, dropped)
        except IdentityError as exc:
            if exc.code == ReasonCode.NO_LOCAL_IDENTIFIER:
                raise MappingError(
                    ReasonCode.NO_PATIENT,
                    "no hospital patient identifier (IPP) in the identifier list",
                    location,
                ) from None
            raise MappingError(exc.code, str(exc), location, "INS") from None
        for error in dropped:
            self.drop(Rejection(error.code, f"{error}; the INS is left out, the IPP kept", location, "INS"))
        return ref

    def visit(self, raw: str) -> Record | None:
        """PV1-19 (CX) as the canonical EncounterRef, or None without a visit number."""
        if not raw:
            return None
        d = self.d
        comps = _first_rep(raw, d).split(d.component)
        number = _first(comps[0], d).strip()
        if not number:
            return None
        name, oid = _hd_in_component(comps[3], d) if len(comps) > 3 else (None, None)
        if name is None and oid is None:  # a visit number is unique only within its sender, as an IPP
            name, oid = self.sender_scope()
        return {"visit_number": number, "authority_name": name, "authority_oid": oid}

    def organization_from_msh(self) -> Record | None:
        """The sending facility (MSH-4, an HD) as the organisation responsible for what it sends."""
        msh = self.message.segment("MSH")
        msh_fields = msh.raw.split(self.d.field) if msh is not None else []
        raw = msh_fields[3] if len(msh_fields) > 3 else ""  # MSH-1 is the separator: MSH-n is item n - 1
        if not raw:
            return None
        c = _leaves(raw, self.d, 3)
        name, oid = _hd(c[0], c[1], c[2])
        if name is None and oid is None:
            return None
        return {"id": f"urn:oid:{oid}" if oid else None, "id_system": _OID_URI if oid else None, "name": name}

    # -- codes ---------------------------------------------------------------------------------------

    def best_coding(self, c: list[str]) -> tuple[Record | None, bool, Record | None]:
        """(preferred coding, is it local, the other one) of CE/CWE leaves (padded to 6).

        A standard code is preferred wherever the sender put it: French LIS often send the local code
        first and LOINC as the alternate, and national platforms key on LOINC.
        """
        primary = {"system": self.system_uri(c[2]), "code": c[0], "display": c[1] or None} if c[0] else None
        alternate = {"system": self.system_uri(c[5]), "code": c[3], "display": c[4] or None} if c[3] else None
        primary_known = primary is not None and self.known(c[2])
        if primary is None or (not primary_known and alternate is not None and self.known(c[5])):
            return alternate, alternate is None or not self.known(c[5]), primary
        return primary, not primary_known, alternate

    def first_coding(self, raw: str) -> Record | None:
        if not raw:
            return None
        chosen, _, _ = self.best_coding(_leaves(_first_rep(raw, self.d), self.d, 6))
        return chosen
