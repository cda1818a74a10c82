"""HL7 v2 (ADT with IHE PAM France, ORU^R01 including IHE PCD-01) → canonical events.

A pure function of (message text, raw context, options), so that a replay of a raw record yields
byte-identical canonical records with the same event ids (DESIGN §4, §7). The rules every mapper shares
(times, INS, units, event ids) live in the sibling modules; this one only knows where HL7 keeps things.

Why the code looks the way it does:

* Speed. The normalizer must keep up with a whole region's interface engines on a few cores, so the
  message is tokenized once by :mod:`formats.hl7.er7`, each segment used is split once with
  ``str.split``, and records are built as plain dicts in their Avro shape. No regular expression runs
  per field, nothing is validated twice, and hl7apy (milliseconds per message) is not used.
* Strictness where a wrong guess would corrupt data, leniency elsewhere. A missing patient, a bad INS
  key, an unreadable date or a result without a code rejects the message (it goes to the dead-letter
  topic with a precise location); an unknown segment, an odd unit or a text in a numeric result does
  not, because refusing those would stop a feed for something the canonical model can still carry.
* No message value ever appears in an exception: reasons name HL7 positions and rules only, since
  rejections end up in logs, metrics and dead-letter metadata (DESIGN §6).

The decisions (what A08, cancellations, A40, NTE, PCD-01 containment rows become) are listed in
docs/mapping-hl7.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final

from formats.clinical.codes import LOINC
from formats.clinical.identity import IdentityError, LocalId, patient_ref
from formats.clinical.times import ClinicalTime, TimeFormatError, hl7_date_text, parse_hl7_ts
from formats.clinical.units import UCUM_SYSTEM, quantity, to_ucum
from formats.hl7.er7 import Delimiters, Er7Error, Message, Segment, parse, unescape
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext, envelope, event_id
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError

__all__ = ["fast_hl7_date_text", "fast_hl7_ts", "map_hl7"]

Record = dict[str, Any]

# --- ADT tables -------------------------------------------------------------------------------------

# Triggers that carry a movement of the visit (IHE PAM); Z99 is PAM France's "update a movement".
_ENCOUNTER_EVENT_TYPES: Final[dict[str, str]] = {
    "A01": "encounter.admitted",
    "A02": "encounter.transferred",
    "A03": "encounter.discharged",
    "A04": "encounter.registered",
    "A05": "encounter.preadmitted",
    "A06": "encounter.class_changed",
    "A07": "encounter.class_changed",
    "A11": "encounter.admission_cancelled",
    "A12": "encounter.transfer_cancelled",
    "A13": "encounter.discharge_cancelled",
    "Z99": "encounter.movement_updated",
}
_PATIENT_ONLY: Final = frozenset({"A28", "A31"})
_ADT_TRIGGERS: Final = frozenset({*_ENCOUNTER_EVENT_TYPES, *_PATIENT_ONLY, "A08", "A40"})
_CANCELLED_TRIGGER: Final[dict[str, str]] = {"A12": "A02", "A13": "A03"}
_STATUS_AFTER: Final[dict[str, str]] = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "in-progress",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A11": "cancelled",
    "A12": "in-progress",
    "A13": "in-progress",
}
_MOVEMENT_ACTIONS: Final = frozenset({"INSERT", "UPDATE", "CANCEL"})
# HL7 table 0004 (PV1-2) → FHIR v3-ActCode. N (not applicable), U (unknown), C (commercial account) and
# site-specific letters have no class: null rather than a guess.
_ENCOUNTER_CLASS: Final[dict[str, str]] = {
    "I": "IMP",
    "O": "AMB",
    "E": "EMER",
    "P": "PRENC",
    "R": "AMB",
    "B": "IMP",
}

# --- Patient tables ---------------------------------------------------------------------------------

_SEX: Final[dict[str, str]] = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "U": "unknown",
    "N": "unknown",
}
# HL7 table 0200 (XPN-7) → FHIR name-use. B (name at birth) is the official name in France (INS traits).
_NAME_USE: Final[dict[str, str]] = {
    "L": "official",
    "B": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "S": "anonymous",
}
# HL7 table 0190 (XAD-7) → FHIR address use; M (mailing) is a type, not a use, hence absent.
_ADDRESS_USE: Final[dict[str, str]] = {
    "H": "home",
    "P": "home",
    "L": "home",
    "B": "work",
    "O": "work",
    "C": "temp",
    "BA": "old",
}
_BIRTH_PLACE: Final = "BDL"
# XTN-3 equipment type → FHIR ContactPoint.system (pager has no slot in the schema: other).
_TELECOM_SYSTEM: Final[dict[str, str]] = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "INTERNET": "email",
    "X.400": "email",
    "BP": "other",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}
_TELECOM_USE: Final[dict[str, str]] = {
    "PRN": "home",
    "ORN": "home",
    "WPN": "work",
    "VHN": "temp",
}
# HL7 table 0002 → HL7 v3 MaritalStatus. v2 U means "unknown" but v3 U means "unmarried": not mapped.
_MARITAL: Final[dict[str, str]] = {
    "M": "M",
    "S": "S",
    "D": "D",
    "W": "W",
    "A": "L",
    "E": "L",
    "N": "A",
    "I": "I",
    "P": "T",
    "R": "T",
    "C": "T",
    "G": "T",
    "B": "U",
}

# --- Result tables ----------------------------------------------------------------------------------

# HL7 table 0085 (OBX-11) → FHIR Observation.status.
_OBX_STATUS: Final[dict[str, str]] = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "U": "final",
    "N": "cancelled",
}
# HL7 table 0123 (OBR-25) → FHIR DiagnosticReport.status.
_OBR_STATUS: Final[dict[str, str]] = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "R": "partial",
    "A": "partial",
    "O": "registered",
    "I": "registered",
    "S": "registered",
}
_V3_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# Codes of HL7 table 0078 that are also v3 ObservationInterpretation codes; others keep no system.
_INTERPRETATION_CODES: Final = frozenset(
    {
        *("L", "H", "LL", "HH", "LU", "HU", "<", ">", "N", "A", "AA", "U", "D", "B", "W"),
        *("S", "R", "I", "MS", "VS", "NEG", "POS", "IND", "DET", "ND", "E", "EX", "HX", "LX"),
        *("IE", "NR", "RR", "NCL", "NS", "SDD", "TOX", "WR", "QCF", "CAR", "AC"),
    }
)
_MDC_SYSTEM_NAME: Final = "MDC"
_IMAGING_SECTIONS: Final = frozenset({"RAD", "RX", "CT", "MR", "US", "NMR", "NMS", "VUS", "XRC", "CUS"})
# LOINC codes of the FHIR vital-signs profile: these are vital signs, not laboratory results.
_VITAL_SIGNS_LOINC: Final = frozenset(
    {
        *("85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4"),
        *("29463-7", "39156-5", "85354-9", "8480-6", "8462-4", "8478-0"),
    }
)
# IEEE 11073-10101 units (code and reference id) → UCUM, for the units PCD-01 devices send.
_MDC_UNITS: Final[dict[str, str]] = {
    "262688": "%",
    "MDC_DIM_PERCENT": "%",
    "264864": "/min",
    "MDC_DIM_BEAT_PER_MIN": "/min",
    "264928": "/min",
    "MDC_DIM_RESP_PER_MIN": "/min",
    "266016": "mm[Hg]",
    "MDC_DIM_MMHG": "mm[Hg]",
    "268192": "Cel",
    "MDC_DIM_DEGC": "Cel",
    "MDC_DIM_FAHR": "[degF]",
    "263875": "kg",
    "MDC_DIM_KILO_G": "kg",
    "MDC_DIM_LB": "[lb_av]",
    "MDC_DIM_CENTI_M": "cm",
    "MDC_DIM_INCH": "[in_i]",
    "MDC_DIM_KG_PER_M_SQ": "kg/m2",
    "MDC_DIM_MILLI_G_PER_DL": "mg/dL",
    "MDC_DIM_MILLI_MOLE_PER_L": "mmol/L",
    "MDC_DIM_MILLI_L": "mL",
}
# IHE PCD's OID for IEEE EUI-64 device identifiers, the Device.identifier.system FHIR sources use: the
# same device read through either door gets the same id_system.
_EUI64_SYSTEM: Final = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
_NULL: Final = '""'  # the HL7 explicit null; a snapshot has no use for "delete", so it reads as absent
_OID_URI: Final = "urn:ietf:rfc:3986"

# --- Small string helpers (hot path: plain str methods, no objects, no regexes) ----------------------


def _leaf(raw: str, d: Delimiters) -> str:
    """First subcomponent of a component, unescaped; the HL7 null reads as empty."""
    if d.subcomponent in raw:
        raw = raw.partition(d.subcomponent)[0]
    if raw == _NULL:
        return ""
    if d.escape in raw:
        return unescape(raw, d)
    return raw


def _leaves(rep: str, d: Delimiters, n: int) -> list[str]:
    """Components of one repetition as leaves, padded with "" to at least ``n``.

    One call per repetition rather than one per component: the common clean case (no escape, no
    subcomponent, no HL7 null) costs a single split, and callers index the list without bounds checks.
    """
    comps = rep.split(d.component)
    if d.escape in rep or d.subcomponent in rep or _NULL in rep:
        comps = [_leaf(c, d) for c in comps]
    short = n - len(comps)
    if short > 0:
        comps.extend([""] * short)
    return comps


def _text(raw: str, d: Delimiters) -> str:
    """A whole repetition read as text: component separators a sender left unescaped are kept."""
    if raw == _NULL:
        return ""
    return unescape(raw, d) if d.escape in raw else raw


def _first(raw: str, d: Delimiters) -> str:
    """First repetition, first component, first subcomponent: the code of a simple coded field."""
    if d.repetition in raw:
        raw = raw.partition(d.repetition)[0]
    if d.component in raw:
        raw = raw.partition(d.component)[0]
    if d.subcomponent in raw:
        raw = raw.partition(d.subcomponent)[0]
    if raw == _NULL:
        return ""
    return unescape(raw, d) if d.escape in raw else raw


def _fields(seg: Segment, d: Delimiters, n: int) -> list[str]:
    """A segment's fields (index = HL7 field number), padded so that fields up to ``n`` can be indexed."""
    parts = seg.raw.split(d.field)
    short = n + 1 - len(parts)
    if short > 0:
        parts.extend([""] * short)
    return parts


def _first_rep(raw: str, d: Delimiters) -> str:
    return raw.partition(d.repetition)[0] if d.repetition in raw else raw


def _looks_like_oid(text: str) -> bool:
    return bool(text) and text.isascii() and text.replace(".", "").isdigit() and text[0] != "."


def _hd(namespace: str, universal_id: str, id_type: str) -> tuple[str | None, str | None]:
    """(namespace, OID) of an HD; the universal id counts as an OID only when typed ISO or shaped so."""
    oid: str | None = None
    if universal_id and (id_type.upper() == "ISO" or (not id_type and _looks_like_oid(universal_id))):
        oid = universal_id
    return (namespace or None), oid


def _hd_in_component(raw: str, d: Delimiters) -> tuple[str | None, str | None]:
    subs = raw.split(d.subcomponent)
    n = len(subs)
    return _hd(
        _text(subs[0], d),
        _text(subs[1], d) if n > 1 else "",
        _text(subs[2], d) if n > 2 else "",
    )


def _number(text: str) -> float | None:
    """A decimal as clinical systems write it (French decimal comma accepted), or None.

    ``float()`` alone is too lenient: it takes "nan", "inf", "1_000" and non-ASCII digits, none of
    which is a measured value, and NaN/infinity would poison every downstream aggregate.
    """
    t = text.strip()
    if not t or not t.isascii() or "_" in t:
        return None
    if "," in t and "." not in t:
        t = t.replace(",", ".")
    try:
        value = float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _comparator_number(text: str) -> tuple[str | None, float | None]:
    t = text.strip()
    comparator: str | None = None
    if t[:1] in ("<", ">"):
        comparator = t[:2] if t[1:2] == "=" else t[:1]
        t = t[len(comparator) :]
    return comparator, _number(t)


# --- Times: fast paths for the common shapes, the lead's functions for everything else ---------------

_PRECISION_BY_LENGTH: Final[dict[int, str]] = {8: "day", 10: "hour", 12: "minute", 14: "second"}
_DATE_LENGTHS: Final = frozenset({4, 6, 8, 10, 12, 14})
# UTC offset of each local hour already met, per zone: feeds cluster in time, so nearly every time
# value reuses an hour seen before. Bounded: cleared when full.
_HOUR_OFFSETS: dict[tuple[tzinfo, str], timedelta] = {}
_HOUR_OFFSETS_LIMIT: Final = 8192
_UTC_TZ: Final = UTC


def _hour_offset(zone: tzinfo, hour: str) -> timedelta | None:
    """The offset local wall time has from UTC during one local hour, or None when it is not uniform.

    Computed with :func:`parse_hl7_ts` itself (start and end of the hour), so the spring gap and the
    autumn fold keep exactly the lead's documented semantics; an hour in which the offset changes
    (a zone whose transitions fall inside an hour) is left to the slow path.
    """
    key = (zone, hour)
    offset = _HOUR_OFFSETS.get(key)
    if offset is not None:
        return offset
    first = parse_hl7_ts(hour + "0000", zone)
    last = parse_hl7_ts(hour + "5959", zone)
    if first is None or last is None:
        return None
    naive_first = datetime(int(hour[:4]), int(hour[4:6]), int(hour[6:8]), int(hour[8:10]), tzinfo=_UTC_TZ)
    offset = naive_first - first.instant
    if naive_first + timedelta(minutes=59, seconds=59) - last.instant != offset:
        return None
    if len(_HOUR_OFFSETS) >= _HOUR_OFFSETS_LIMIT:
        _HOUR_OFFSETS.clear()
    _HOUR_OFFSETS[key] = offset
    return offset


def fast_hl7_ts(value: str, zone: tzinfo) -> ClinicalTime | None:
    """parse_hl7_ts for ``YYYYMMDD[HH[MM[SS]]][+/-ZZZZ]``, or None to let parse_hl7_ts handle the rest.

    The general parser costs a regex and two time-zone conversions per value (several microseconds,
    a large share of a message's budget); this path slices digits and reuses one offset per hour.
    Anything unusual (fractions, partial dates, bad digits, out-of-range values) returns None so that
    the general parser decides, and raises, exactly as it always does.
    """
    n = len(value)
    offset_text = ""
    if n > 13 and value[-5] in "+-":
        offset_text = value[-5:]
        value = value[:-5]
        n -= 5
    precision = _PRECISION_BY_LENGTH.get(n)
    if precision is None or not value.isdigit() or not value.isascii():
        return None
    try:
        naive = datetime(
            int(value[:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10] or 0),
            int(value[10:12] or 0),
            int(value[12:14] or 0),
            tzinfo=_UTC_TZ,
        )
    except ValueError:
        return None
    if offset_text:
        digits = offset_text[1:]
        if not digits.isdigit() or not digits.isascii():
            return None
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        return ClinicalTime(naive - offset if offset_text[0] == "+" else naive + offset, precision)
    hour_offset = _hour_offset(zone, (value + "00")[:10])
    if hour_offset is None:
        return None
    return ClinicalTime(naive - hour_offset, precision)


def fast_hl7_date_text(value: str) -> str | None:
    """hl7_date_text for plain digit values, or None to let hl7_date_text handle (or reject) the rest."""
    n = len(value)
    if n not in _DATE_LENGTHS or not value.isdigit() or not value.isascii():
        return None
    year, month, day = value[:4], value[4:6], value[6:8]
    try:
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if not month:
        return year
    return f"{year}-{month}" if not day else f"{year}-{month}-{day}"


# --- Per-message state --------------------------------------------------------------------------------

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


class _Mapping:
    """What the functions of one mapping share: delimiters, context, options and a time cache.

    Times repeat inside a message (every OBX of a panel has the same OBX-14), so each distinct text is
    parsed once per message.
    """

    __slots__ = ("ctx", "d", "first_envelope", "mdc", "message", "options", "systems", "times")

    def __init__(self, message: Message, ctx: RawContext, options: MappingOptions) -> None:
        self.message = message
        self.d = message.delimiters
        self.ctx = ctx
        self.options = options
        self.systems = options.code_systems
        self.mdc = self.system_uri(_MDC_SYSTEM_NAME)
        self.times: dict[str, ClinicalTime | None] = {}
        self.first_envelope: Record | None = None

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
            type_code = _first(comps[4], d) if n > 4 else ""
            ids.append(LocalId(value, name, oid, type_code or None))
        return ids

    def patient(self, id_field: str, reliability_field: str, location: str) -> Record:
        d = self.d
        reliability = (
            [_first(rep, d) for rep in reliability_field.split(d.repetition)] if reliability_field else []
        )
        try:
            return patient_ref(self.local_ids(id_field), reliability)
        except IdentityError as exc:
            if exc.code == "no_local_identifier":
                raise MappingError(
                    ReasonCode.NO_PATIENT,
                    "no hospital patient identifier (IPP) in the identifier list",
                    location,
                ) from None
            raise MappingError(exc.code, str(exc), location, "INS") from None

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


# --- Entry point --------------------------------------------------------------------------------------


def map_hl7(text: str, ctx: RawContext, options: MappingOptions) -> list[CanonicalEvent]:
    """Map one decoded HL7 v2 message; raises MappingError when a rule fails (see run_mapper)."""
    try:
        message = parse(text)
    except Er7Error as exc:
        raise MappingError(
            ReasonCode.UNPARSABLE, f"not a readable ER7 message ({exc.code})", exc.location, "ER7"
        ) from None
    m = _Mapping(message, ctx, options)
    code = message.get("MSH-9.1") or ""
    trigger = message.get("MSH-9.2") or ""
    if code == "ADT":
        if not trigger:
            trigger = message.get("EVN-1") or ""
        if trigger in _ADT_TRIGGERS:
            return _map_adt(m, trigger)
    elif code == "ORU" and trigger == "R01":
        return _map_oru(m)
    raise MappingError(
        ReasonCode.UNSUPPORTED_EVENT, "message type or trigger event is not one this hub maps", "MSH-9"
    )


# --- ADT ----------------------------------------------------------------------------------------------


def _map_adt(m: _Mapping, trigger: str) -> list[CanonicalEvent]:
    msg = m.message
    d = m.d
    pid = msg.segment("PID")
    if pid is None:
        raise MappingError(ReasonCode.NO_PATIENT, "the message has no PID segment", "PID-3")
    pid_parts = _fields(pid, d, _PID_SIZE)
    ref = m.patient(pid_parts[3], pid_parts[32], "PID-3")
    evn = msg.segment("EVN")
    evn_parts = _fields(evn, d, _EVN_SIZE) if evn is not None else [""] * (_EVN_SIZE + 1)
    occurred = m.time(evn_parts[6], "EVN-6")
    when = occurred or m.time(evn_parts[2], "EVN-2")

    patient_type = "patient.registered" if trigger == "A28" else "patient.updated"
    events = [m.event("patient", "PID", patient_type, when, _patient_record(m, ref, pid_parts))]
    if trigger == "A40":
        events.extend(_merges(m, when))
        return events
    if trigger in _PATIENT_ONLY:
        return events
    pv1 = msg.segment("PV1")
    pv1_parts = _fields(pv1, d, _PV1_SIZE) if pv1 is not None else [""] * (_PV1_SIZE + 1)
    visit = m.visit(pv1_parts[19])
    if visit is None:
        if trigger == "A08":
            return events  # an identity update without a visit: nothing to say about an encounter
        raise MappingError(ReasonCode.NO_VISIT, "a movement needs a visit number", "PV1-19")
    events.append(_encounter(m, trigger, ref, visit, pv1_parts, occurred, when))
    return events


def _patient_record(m: _Mapping, ref: Record, parts: list[str]) -> Record:
    d = m.d
    addresses, birth_place = _addresses(parts[11], d)
    telecom = _telecom(parts[13], "home", d)
    if parts[14]:
        telecom.extend(_telecom(parts[14], "work", d))
    death_date = m.date_text(parts[29], "PID-29")
    deceased_flag = _first(parts[30], d).upper() if parts[30] else ""
    deceased = True if deceased_flag == "Y" else False if deceased_flag == "N" else None
    if deceased is None and death_date:
        deceased = True  # a date of death states the death even when PID-30 is left empty
    return {
        "envelope": None,
        "patient": ref,
        "names": _names(parts[5], d),
        "birth_date": m.date_text(parts[7], "PID-7"),
        "birth_place_code": birth_place,
        "sex": _SEX.get(_first(parts[8], d).upper()) if parts[8] else None,
        "addresses": addresses,
        "telecom": telecom,
        "deceased": deceased,
        "death_date": death_date,
        "marital_status": _MARITAL.get(_first(parts[16], d)) if parts[16] else None,
        "merged_into": None,
    }


def _names(raw: str, d: Delimiters) -> list[Record]:
    names: list[Record] = []
    if not raw:
        return names
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 7)
        family, first = c[0], c[1]
        # PAM France puts the first given name in XPN-2 and all birth given names, space-separated and
        # starting with the first, in XPN-3; elsewhere XPN-3 holds only the further names.
        further = c[2].split()
        given = further if further and further[0] == first else ([first, *further] if first else further)
        if not family and not given:
            continue
        names.append({"use": _NAME_USE.get(c[6].upper()), "family": family or None, "given": given})
    return names


def _addresses(raw: str, d: Delimiters) -> tuple[list[Record], str | None]:
    addresses: list[Record] = []
    birth_place: str | None = None
    if not raw:
        return addresses, birth_place
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 9)
        kind = c[6].upper()
        if kind == _BIRTH_PLACE:
            # IHE PAM France: the birth place travels as an address typed BDL, INSEE code in XAD-9.
            birth_place = birth_place or c[8] or None
            continue
        lines = [line for line in (c[0], c[1]) if line]
        city, postal, country = c[2], c[4], c[5]
        if not (lines or city or postal or country):
            continue
        addresses.append(
            {
                "use": _ADDRESS_USE.get(kind),
                "lines": lines,
                "city": city or None,
                "postal_code": postal or None,
                "country": country or None,
            }
        )
    return addresses, birth_place


def _telecom(raw: str, default_use: str, d: Delimiters) -> list[Record]:
    points: list[Record] = []
    if not raw:
        return points
    for rep in raw.split(d.repetition):
        if not rep or rep == _NULL:
            continue
        c = _leaves(rep, d, 12)
        use_code = c[1].upper()
        equipment = c[2].upper()
        system = _TELECOM_SYSTEM.get(equipment) or ("email" if use_code == "NET" else "phone")
        # E-mail addresses live in XTN-4; numbers in XTN-12, else in their parts, else in the old XTN-1.
        value = (c[3] or c[0]) if system == "email" else (c[11] or f"{c[4]}{c[5]}{c[6]}" or c[0] or c[3])
        if not value:
            continue
        use = "mobile" if equipment == "CP" else _TELECOM_USE.get(use_code, default_use)
        points.append({"system": system, "value": value, "use": use})
    return points


def _location(raw: str, d: Delimiters, medical_unit: str | None = None) -> Record | None:
    """A PL (point of care^room^bed^facility HD) as the canonical Location, or None when empty."""
    if not raw and medical_unit is None:
        return None
    rep = _first_rep(raw, d)
    c = _leaves(rep, d, 4)
    facility = c[3]
    if facility and d.subcomponent in rep:
        name, oid = _hd_in_component(rep.split(d.component)[3], d)
        facility = name or oid or ""
    if not (c[0] or c[1] or c[2] or facility or medical_unit):
        return None
    return {
        "service": c[0] or None,
        "room": c[1] or None,
        "bed": c[2] or None,
        "facility": facility or None,
        "medical_unit": medical_unit,
    }


def _table_coding(raw: str, d: Delimiters) -> Record | None:
    """A user-defined table value (PV1-14, PV1-36): site-specific, so no system is claimed."""
    code = _first(raw, d) if raw else ""
    return {"system": None, "code": code, "display": None} if code else None


def _encounter(
    m: _Mapping,
    trigger: str,
    ref: Record,
    visit: Record,
    pv1: list[str],
    occurred: ClinicalTime | None,
    recorded: ClinicalTime | None,
) -> CanonicalEvent:
    d = m.d
    period_end = m.time(pv1[45], "PV1-45")
    period_start = m.time(pv1[44], "PV1-44")
    medical_unit: str | None = None
    movement: Record | None = None
    when = recorded
    status: str | None = None
    if trigger != "A08":
        zbe_seg = m.message.segment("ZBE")
        zbe = _fields(zbe_seg, d, _ZBE_SIZE) if zbe_seg is not None else [""] * (_ZBE_SIZE + 1)
        move_time = m.time(zbe[2], "ZBE-2") or occurred
        historic = _first(zbe[5], d).upper() == "Y"
        action = _first(zbe[4], d).upper()
        if trigger in ("A11", "A12", "A13"):
            action = "CANCEL"
        elif action not in _MOVEMENT_ACTIONS:
            action = "UPDATE" if trigger == "Z99" else "INSERT"
        original = _first(zbe[6], d) or _CANCELLED_TRIGGER.get(trigger)
        if zbe[7]:
            unit = _leaves(_first_rep(zbe[7], d), d, 10)
            medical_unit = unit[9] or unit[0] or None
        movement = {
            "type": trigger,
            "movement_id": _first(zbe[1], d) or None,
            "action": action,
            "time": move_time.instant if move_time else None,
            "historic": historic,
            "original_trigger": original or None,
            "nature": _first(zbe[9], d) or None,
        }
        when = move_time or recorded
        # A historic movement or a movement update says nothing about the visit's state now.
        if not historic and trigger != "Z99":
            status = _STATUS_AFTER.get(trigger)
    if status is None:
        status = "finished" if period_end else "in-progress" if period_start else "unknown"
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "status": status,
        "encounter_class": _ENCOUNTER_CLASS.get(_first(pv1[2], d).upper()) if pv1[2] else None,
        "movement": movement,
        "location": _location(pv1[3], d, medical_unit),
        "prior_location": _location(pv1[6], d),
        "period_start": period_start.instant if period_start else None,
        "period_end": period_end.instant if period_end else None,
        "admit_source": _table_coding(pv1[14], d),
        "discharge_disposition": _table_coding(pv1[36], d),
        "service_provider": m.organization_from_msh(),
    }
    event_type = "encounter.updated" if trigger == "A08" else _ENCOUNTER_EVENT_TYPES[trigger]
    return m.event("encounter", "PV1", event_type, when, record)


def _merges(m: _Mapping, when: ClinicalTime | None) -> list[CanonicalEvent]:
    """A40: each PID/MRG pair merges the MRG identity into the PID one.

    Two events per pair: the retired identity's Patient record with ``merged_into`` (keyed by the
    retired key, so it closes that identity's ordered stream), and a MERGE Retraction keyed by the
    surviving patient, which downstream stages apply to what they already sent.
    """
    d = m.d
    events: list[CanonicalEvent] = []
    survivor: Record | None = None
    pid_count = mrg_count = 0
    for seg in m.message.segments:
        name = seg.name
        if name == "PID":
            pid_count += 1
            parts = _fields(seg, d, _PID_SIZE)
            location = "PID-3" if pid_count == 1 else f"PID({pid_count})-3"
            survivor = m.patient(parts[3], parts[32], location)
            if pid_count > 1:
                record = _patient_record(m, survivor, parts)
                events.append(m.event("patient", f"PID[{pid_count}]", "patient.updated", when, record))
        elif name == "MRG" and survivor is not None:
            mrg_count += 1
            parts = _fields(seg, d, _MRG_SIZE)
            location = "MRG-1" if mrg_count == 1 else f"MRG({mrg_count})-1"
            retired = m.patient(parts[1], "", location)
            index = "MRG" if mrg_count == 1 else f"MRG[{mrg_count}]"
            retired_record: Record = {
                "envelope": None,
                "patient": retired,
                "names": _names(parts[7], d),
                "birth_date": None,
                "birth_place_code": None,
                "sex": None,
                "addresses": [],
                "telecom": [],
                "deceased": None,
                "death_date": None,
                "marital_status": None,
                "merged_into": survivor["key"],
            }
            events.append(m.event("patient", index, "patient.merged", when, retired_record))
            retraction: Record = {
                "envelope": None,
                "patient": survivor,
                "kind": "MERGE",
                "target_event_ids": [],
                "target_source_reference": None,
                "retired_patient": retired,
                "reason_code": "identity-merge",
            }
            events.append(m.event("retraction", index, "retraction.issued", when, retraction))
    if mrg_count == 0:
        raise MappingError(
            ReasonCode.NO_MERGED_PATIENT, "a merge needs an MRG segment with the retired identifier", "MRG-1"
        )
    return events


# --- ORU^R01 ------------------------------------------------------------------------------------------


class _Order:
    """One OBR and what follows it until the next OBR: its observations, notes and specimen."""

    __slots__ = ("devices", "effective", "index", "issued", "notes", "observations", "parts", "section")

    def __init__(self, m: _Mapping, index: int, parts: list[str]) -> None:
        self.index = index
        self.parts = parts
        self.effective = m.time(parts[7], f"OBR({index})-7")
        self.issued = m.time(parts[22], f"OBR({index})-22")
        self.section = _first(parts[24], m.d) if parts[24] else ""
        self.observations: list[CanonicalEvent] = []
        self.notes: list[str] = []
        # PCD-01 containment tree: the device of each MDS, for the metrics below it without OBX-18.
        self.devices: dict[str, tuple[str, str | None]] = {}


def _map_oru(m: _Mapping) -> list[CanonicalEvent]:
    d = m.d
    events: list[CanonicalEvent] = []
    ref: Record | None = None
    visit: Record | None = None
    order: _Order | None = None
    specimen: Record | None = None
    pid_count = obr_count = obx_count = obx_in_order = 0
    facility = m.organization_from_msh()
    for seg in m.message.segments:
        name = seg.name
        if name == "OBX":
            obx_count += 1
            if ref is None:
                raise MappingError(ReasonCode.NO_PATIENT, "results come before any PID segment", "PID-3")
            if order is not None:
                obx_in_order += 1
                index = f"OBR[{order.index}]/OBX[{obx_in_order}]"
            else:
                index = f"OBX[{obx_count}]"
            obs = _observation(m, _fields(seg, d, _OBX_SIZE), obx_count, index, order, ref, visit, facility)
            if obs is None:
                continue
            if order is not None:
                order.observations.append(obs)
            else:
                events.append(obs)
        elif name == "OBR":
            obr_count += 1
            if ref is None:
                raise MappingError(ReasonCode.NO_PATIENT, "results come before any PID segment", "PID-3")
            if order is not None:
                events.extend(_close_order(m, order, specimen, ref, visit, facility))
            order = _Order(m, obr_count, _fields(seg, d, _OBR_SIZE))
            specimen = None
            obx_in_order = 0
        elif name == "NTE":
            if order is not None:
                parts = _fields(seg, d, _NTE_SIZE)
                note = "\n".join(t for t in (_text(r, d) for r in parts[3].split(d.repetition)) if t)
                if note:
                    order.notes.append(note)
        elif name == "PID":
            pid_count += 1
            if order is not None and ref is not None:
                events.extend(_close_order(m, order, specimen, ref, visit, facility))
                order = None
            parts = _fields(seg, d, _PID_SIZE)
            ref = m.patient(parts[3], parts[32], "PID-3" if pid_count == 1 else f"PID({pid_count})-3")
            visit = None
        elif name == "PV1":
            visit = m.visit(_fields(seg, d, 19)[19])
        elif name == "SPM" and order is not None and specimen is None:
            specimen = m.first_coding(_fields(seg, d, _SPM_SIZE)[4])
        # ORC, TQ1, Z-segments...: nothing canonical, and never a reason to fail
    if ref is None:
        raise MappingError(ReasonCode.NO_PATIENT, "the message has no PID segment", "PID-3")
    if order is not None:
        events.extend(_close_order(m, order, specimen, ref, visit, facility))
    return events


def _sps_specimen(m: _Mapping, raw: str) -> Record | None:
    """OBR-15 (SPS, deprecated since 2.5): the specimen source is in the subcomponents of component 1."""
    if not raw:
        return None
    d = m.d
    subs = _first_rep(raw, d).partition(d.component)[0].split(d.subcomponent)
    code = _text(subs[0], d)
    if not code:
        return None
    return {
        "system": m.system_uri(_text(subs[2], d) if len(subs) > 2 else ""),
        "code": code,
        "display": (_text(subs[1], d) if len(subs) > 1 else "") or None,
    }


def _close_order(
    m: _Mapping,
    order: _Order,
    specimen: Record | None,
    ref: Record,
    visit: Record | None,
    facility: Record | None,
) -> list[CanonicalEvent]:
    d = m.d
    parts = order.parts
    specimen = specimen or _sps_specimen(m, parts[15])
    if specimen is not None:
        for obs in order.observations:
            obs.record["specimen_type"] = specimen
    code = m.first_coding(parts[4])
    if code is None:
        raise MappingError(
            ReasonCode.NO_CODE, "the report has no universal service identifier", f"OBR({order.index})-4"
        )
    status = _OBR_STATUS.get(_first(parts[25], d).upper(), "unknown") if parts[25] else "unknown"
    event_type = _REPORT_EVENT_TYPES.get(status, "diagnostic_report.issued")
    effective, issued = order.effective, order.issued
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "code": code,
        "status": status,
        "category": order.section or None,
        "effective_time": effective.instant if effective else None,
        "effective_time_precision": effective.precision if effective else None,
        "issued": issued.instant if issued else None,
        "result_event_ids": [obs.event_id for obs in order.observations],
        "conclusion": "\n".join(order.notes) or None,
        "conclusion_codes": [],
        "performer_organization": facility,
    }
    report = m.event("diagnostic_report", f"OBR[{order.index}]", event_type, effective or issued, record)
    return [*order.observations, report]


_REPORT_EVENT_TYPES: Final[dict[str, str]] = {
    "corrected": "diagnostic_report.corrected",
    "cancelled": "diagnostic_report.cancelled",
}
# As the FHIR mapper does: entered-in-error results are withdrawn like cancelled ones.
_OBSERVATION_EVENT_TYPES: Final[dict[str, str]] = {
    "C": "observation.corrected",
    "X": "observation.cancelled",
    "N": "observation.cancelled",
    "D": "observation.cancelled",
    "W": "observation.cancelled",
}


def _hierarchy(sub_id: str) -> str | None:
    """OBX-4 as an IEEE 11073 containment position (MDS.VMD.channel.metric) when it has that shape."""
    if "." in sub_id and sub_id.replace(".", "").isdigit() and sub_id.isascii():
        return sub_id
    return None


def _device(d: Delimiters, raw: str) -> tuple[str, str | None] | None:
    """(id, id_system) of the first OBX-18 equipment identifier (EI); an EUI-64 gets IHE PCD's OID."""
    for rep in raw.split(d.repetition):
        c = _leaves(rep, d, 4)
        ident = c[0]
        if not ident:
            continue
        namespace, universal, universal_type = c[1], c[2], c[3].upper()
        kinds = {namespace.upper(), universal.upper(), universal_type}
        if "EUI-64" in kinds or "EUI64" in kinds:
            return ident, _EUI64_SYSTEM
        if universal and universal_type == "ISO":
            return ident, f"urn:oid:{universal}"
        return ident, (namespace or universal or None)
    return None


def _unit_quantity(m: _Mapping, value: float, unit_raw: str) -> tuple[Record, bool]:
    """The Quantity record of a value in OBX-6's unit, and whether a conversion changed the unit.

    The unit's coding system decides how to read it: MDC codes go through the IEEE 11073 table, a unit
    the sender declares UCUM is trusted even when our synonym list does not know it, anything else is
    free text looked up in the synonym list.
    """
    conversions: Mapping[str, str] = m.options.unit_conversions
    if not unit_raw:
        return quantity(value, "", conversions).as_record(), False
    d = m.d
    c = _leaves(_first_rep(unit_raw, d), d, 3)
    ident, text, system = c[0], c[1], c[2].upper()
    original = ident or text
    if system == _MDC_SYSTEM_NAME:
        ucum = _MDC_UNITS.get(ident) or _MDC_UNITS.get(text)
        q = quantity(value, ucum or original, conversions)
        rec = q.as_record()
        rec["original_unit"] = original or None
        return rec, bool(ucum) and q.unit != ucum
    q = quantity(value, original, conversions)
    rec = q.as_record()
    if q.unit_system is None and original and system == "UCUM":
        rec["unit"], rec["unit_system"] = original, UCUM_SYSTEM
        return rec, False
    return rec, q.unit_system is not None and q.unit != to_ucum(original)


def _reference_range(m: _Mapping, raw: str, unit_raw: str, converted: bool) -> Record | None:
    if not raw:
        return None
    text = _text(_first_rep(raw, m.d), m.d).strip()
    if not text:
        return None
    low: float | None = None
    high: float | None = None
    if text[0] in "<>":
        comparator, bound = _comparator_number(text)
        if bound is not None:
            if comparator in ("<", "<="):
                high = bound
            else:
                low = bound
    else:
        dash = text.find("-", 1)
        if dash > 0:
            lo, hi = _number(text[:dash]), _number(text[dash + 1 :])
            if lo is not None and hi is not None:
                low, high = lo, hi
    if converted:
        # The bounds are in the sender's unit; a converted value must be compared with converted bounds.
        if low is not None:
            low = float(_unit_quantity(m, low, unit_raw)[0]["value"])
        if high is not None:
            high = float(_unit_quantity(m, high, unit_raw)[0]["value"])
    return {"low": low, "high": high, "text": text}


def _value(m: _Mapping, value_type: str, raw: str, unit_raw: str, location: str) -> tuple[str, Any, bool]:
    """(value field name, value, unit converted) for OBX-5 read per OBX-2; raw is non-empty.

    An empty field name means no value: the second item is then the data-absent reason, or None.
    """
    d = m.d
    first = _first_rep(raw, d)
    if value_type == "NM":
        comparator, number = _comparator_number(_text(first, d))
        if number is None:
            return "value_string", _text(first, d), False  # a text in a numeric result: kept, not refused
        rec, converted = _unit_quantity(m, number, unit_raw)
        rec["comparator"] = comparator
        return "value_quantity", rec, converted
    if value_type == "SN":
        c = _leaves(first, d, 4)
        comparator, num1, separator, num2 = c[0], c[1], c[2], c[3]
        number = _number(num1)
        if number is not None and not separator and not num2:
            rec, converted = _unit_quantity(m, number, unit_raw)
            rec["comparator"] = comparator if comparator in ("<", ">", "<=", ">=") else None
            return "value_quantity", rec, converted
        # Ratios (1:128) and ranges (10-20) have no slot in the canonical model: kept as text.
        text = f"{'' if comparator == '=' else comparator}{num1}{separator}{num2}"
        return ("value_string", text, False) if text else ("", None, False)
    if value_type in ("CE", "CWE", "CNE", "CF"):
        c = _leaves(first, d, 6)
        coding, _, _ = m.best_coding(c)
        if coding is None:
            text = c[1] or c[4]
            return ("value_string", text, False) if text else ("", None, False)
        return "value_code", coding, False
    if value_type == "DT":
        date = m.date_text(first, location)
        return ("value_string", date, False) if date else ("", None, False)
    if value_type in ("TS", "DTM"):
        when = m.time(first, location)
        if when is None:
            return "", None, False
        if when.precision in ("year", "month", "day"):
            return "value_string", when.date_text(m.options.timezone), False
        return "value_string", when.instant.isoformat(), False
    if value_type in ("ED", "RP"):
        return "", "unsupported", False  # encapsulated documents and references: not a canonical value
    # ST, TX, FT, and any other type read as text; repetitions are lines.
    text = "\n".join(_text(rep, d) for rep in raw.split(d.repetition)).strip("\n")
    return ("value_string", text, False) if text else ("", None, False)


def _category(m: _Mapping, code: Record, order: _Order | None) -> str:
    system = code["system"]
    if system == m.mdc:
        return "device"
    if system == LOINC and code["code"] in _VITAL_SIGNS_LOINC:
        return "vital-signs"
    if order is not None and order.section.upper() in _IMAGING_SECTIONS:
        return "imaging"
    return "laboratory"


def _observation(
    m: _Mapping,
    parts: list[str],
    occurrence: int,
    index: str,
    order: _Order | None,
    ref: Record,
    visit: Record | None,
    facility: Record | None,
) -> CanonicalEvent | None:
    d = m.d
    location = f"OBX({occurrence})"
    value_type = _first(parts[2], d).upper() if parts[2] else ""
    raw_value = parts[5]
    has_value = bool(raw_value) and raw_value != _NULL
    hierarchy = _hierarchy(_first(parts[4], d)) if parts[4] else None
    device = _device(d, parts[18]) if parts[18] else None
    mds = hierarchy.partition(".")[0] if hierarchy else ""
    if device is not None and mds and order is not None:
        order.devices.setdefault(mds, device)
    code, local, other = m.best_coding(_leaves(_first_rep(parts[3], d), d, 6))
    if code is None:
        raise MappingError(ReasonCode.NO_CODE, "the result has no observation identifier", f"{location}-3")
    if hierarchy and not has_value and not value_type and hierarchy.endswith(".0"):
        # PCD-01 containment rows (MDS, VMD, channel) describe the device tree, not a measurement.
        return None
    if device is None and mds and order is not None:
        device = order.devices.get(mds)

    status_code = _first(parts[11], d).upper() if parts[11] else ""
    value_quantity = value_code = value_string = absent = None
    unit_raw = parts[6]
    converted = False
    if has_value:
        slot, value, converted = _value(m, value_type or "ST", raw_value, unit_raw, f"{location}-5")
        if slot == "value_quantity":
            value_quantity = value
        elif slot == "value_string":
            value_string = value
        elif slot == "value_code":
            value_code = value
        else:
            absent = value or "unknown"
    else:
        absent = "not-performed" if status_code in ("X", "N") else "unknown"

    effective = m.time(parts[14], f"{location}-14")
    issued: ClinicalTime | None = None
    if order is not None:
        effective = effective or order.effective
        issued = order.issued
    interpretation = (
        [
            {
                "system": _V3_INTERPRETATION if flag in _INTERPRETATION_CODES else None,
                "code": flag,
                "display": None,
            }
            for flag in (_first(rep, d) for rep in parts[8].split(d.repetition))
            if flag
        ]
        if parts[8]
        else []
    )
    code["local"] = local
    record: Record = {
        "envelope": None,
        "patient": ref,
        "encounter": visit,
        "status": _OBX_STATUS.get(status_code, "unknown"),
        "category": _category(m, code, order),
        "code": code,
        "additional_codings": [other] if other is not None else [],
        "value_quantity": value_quantity,
        "value_code": value_code,
        "value_string": value_string,
        "value_boolean": None,
        "data_absent_reason": absent,
        "reference_range": _reference_range(m, parts[7], unit_raw, converted),
        "interpretation": interpretation,
        "method": m.first_coding(parts[17]),
        "device": (
            {
                "id": device[0],
                "id_system": device[1],
                "model": None,
                "manufacturer": None,
                "hierarchy": hierarchy,
            }
            if device is not None
            else None
        ),
        "effective_time": effective.instant if effective else None,
        "effective_time_precision": effective.precision if effective else None,
        "issued": issued.instant if issued else None,
        "components": [],
        "specimen_type": None,
        "performer_organization": _organization(m, parts[23]) or facility,
    }
    event_type = _OBSERVATION_EVENT_TYPES.get(status_code, "observation.recorded")
    return m.event("observation", index, event_type, effective, record)


def _organization(m: _Mapping, raw: str) -> Record | None:
    """OBX-23 performing organisation (XON): name, identifier (XON-10, else XON-3) and its authority."""
    if not raw:
        return None
    d = m.d
    rep = _first_rep(raw, d)
    c = _leaves(rep, d, 10)
    name = c[0]
    ident = c[9] or c[2]
    if not name and not ident:
        return None
    id_system: str | None = None
    comps = rep.split(d.component)
    if ident and len(comps) > 5:
        namespace, oid = _hd_in_component(comps[5], d)
        id_system = f"urn:oid:{oid}" if oid else namespace
    return {"id": ident or None, "id_system": id_system, "name": name or None}
