"""French patient identity: **where the INS is recognised** (design §6).

The INS (Identité Nationale de Santé) is recognised by its assigning-authority OID only — never by the
CX-5 type code, which senders fill with INS, NH or NI inconsistently — and its 15-character matricule
(13-character NIR/NIA + 2-digit key) must pass the key check. ``1.2.250.1.213.1.4.2`` is the retired
INS-C and is never an INS. The INS may be used to link data nationally only when the identity is
*qualified* (PID-32 / FR Core identity-reliability ``QUAL``); otherwise the hospital key (IPP + assigning
authority) is what identifies the patient, and downstream pseudonyms are local.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from formats.reasons import ReasonCode

INS_OIDS = {
    "1.2.250.1.213.1.4.8": "NIR",
    "1.2.250.1.213.1.4.9": "NIA",
    "1.2.250.1.213.1.4.10": "TEST",
    "1.2.250.1.213.1.4.11": "DEMO",
}
INS_NIR_OID = "1.2.250.1.213.1.4.8"
RETIRED_INS_C_OID = "1.2.250.1.213.1.4.2"
QUALIFIED = "QUAL"
QUALIFIED_STATUSES = frozenset({QUALIFIED})
_OID_SHAPE = re.compile(r"\d+(\.\d+)+", re.ASCII)


class IdentityError(ValueError):
    """An identifier that claims to be an INS but is not valid; text names the rule, never the value."""

    def __init__(self, code: ReasonCode, reason: str) -> None:
        self.code = code
        super().__init__(reason)


def oid_of(system: str) -> str:
    """'urn:oid:1.2.3' or '1.2.3' → '1.2.3'."""
    return system[8:] if system.startswith("urn:oid:") else system


def ins_key(number13: str) -> int:
    """The NIR/NIA control key: 97 − (number mod 97), Corsica 2A/2B counted as 19/18."""
    body = number13.upper()
    corsica = {"2A": "19", "2B": "18"}.get(body[5:7])
    if corsica is not None:
        body = body[:5] + corsica + body[7:]
    return 97 - int(body) % 97


def valid_matricule(matricule: str) -> bool:
    """15 ASCII characters with a right key. ``str.isdigit`` alone takes full-width and superscript
    digits: a full-width INS that passed would be a second spelling, hence a second pseudonym, of one
    person (and a superscript one made ``int`` raise)."""
    if len(matricule) != 15 or not matricule.isascii():
        return False
    body, key = matricule[:13], matricule[13:]
    corsica = body[5:7].upper() in ("2A", "2B")
    if not key.isdigit() or not (body.isdigit() or (corsica and (body[:5] + body[7:]).isdigit())):
        return False
    return ins_key(body) == int(key)


def ins_from(matricule: str, system: str) -> dict[str, Any] | None:
    """The canonical Ins block if `system` is an INS OID; IdentityError if it is one but the value is bad."""
    oid = oid_of(system)
    kind = INS_OIDS.get(oid)
    if kind is None:
        return None
    value = matricule.strip().replace(" ", "")
    if not valid_matricule(value):
        raise IdentityError(
            ReasonCode.BAD_INS_KEY, "INS matricule is not 15 characters with a valid control key"
        )
    return {"matricule": value.upper(), "oid": oid, "kind": kind}


@dataclass(frozen=True, slots=True)
class LocalId:
    """A patient identifier as the hospital gives it (HL7 CX or FHIR Identifier), already unescaped."""

    value: str
    authority_name: str | None
    authority_oid: str | None
    type_code: str | None = None


def patient_ref(
    ids: Iterable[LocalId],
    reliability: Iterable[str] = (),
    dropped: list[IdentityError] | None = None,
) -> dict[str, Any]:
    """The canonical PatientRef: hospital key (IPP@authority), optional INS, reliability, qualified flag.

    The IPP is the first identifier typed PI (patient internal), else the first non-INS identifier. An
    identifier without an assigning authority is not a key: the same number means different patients in
    two hospitals, so the caller scopes it (by the sender) before it gets here.

    An INS failing its key check raises IdentityError, unless ``dropped`` is given and a local identifier
    remains: then the INS is left out (the record stays identified by its IPP, never linkable) and the
    error is appended to ``dropped`` so that the caller reports what it left out.
    """
    ins: dict[str, Any] | None = None
    local: list[LocalId] = []
    bad_ins: IdentityError | None = None
    saw_ins = False
    for ident in ids:
        if not ident.value:
            continue
        oid = ident.authority_oid or ""
        if oid_of(oid) == RETIRED_INS_C_OID:
            continue  # INS-C: retired, never an INS, not a local key either
        try:
            found = ins_from(ident.value, oid) if oid else None
        except IdentityError as exc:
            saw_ins = True
            bad_ins = bad_ins or exc
            continue
        if found is not None:
            saw_ins = True
            ins = ins or found
        elif ident.authority_oid or ident.authority_name:
            local.append(ident)
    if bad_ins is not None and (dropped is None or not local):
        raise bad_ins
    if not local:
        raise IdentityError(
            ReasonCode.NO_LOCAL_IDENTIFIER,
            "no hospital patient identifier (IPP) besides the INS"
            if saw_ins
            else "no hospital patient identifier (IPP) with an assigning authority",
        )
    if bad_ins is not None and dropped is not None:
        dropped.append(bad_ins)
    ipp = next((i for i in local if (i.type_code or "").upper() == "PI"), local[0])
    authority = ipp.authority_oid or ipp.authority_name or ""
    codes = [c.strip().upper() for c in reliability if c and c.strip()]
    return {
        "key": f"{ipp.value}@{authority}",
        "ipp": {"id": ipp.value, "authority_name": ipp.authority_name, "authority_oid": ipp.authority_oid},
        "ins": ins,
        "identity_reliability": codes[0] if codes else None,
        "ins_qualified": is_qualified(ins, codes),
    }


def reliability_of(statuses: list[str], methods: Iterable[str], has_ins: bool) -> str | None:
    """The identity status (PID-32 vocabulary) from FR Core's identity-reliability statuses and methods.

    FR Core's code system (HL7 table 0445 as published by Interop'Santé) has no QUAL code: a qualified
    identity (RNIV) is a *validated* one (VALI) whose INS was obtained from the INSi teleservice
    (``methodCollection`` INSI). That combination, with an INS present, becomes QUAL; a QUAL sent as such
    (PAM France vocabulary) stays QUAL. Any other status next to it (DOUT, FICT, USUR...) forbids
    qualification and is what is reported.
    """
    if not statuses:
        return None
    trusted = set(statuses) <= {"VALI", QUALIFIED}
    if trusted and (QUALIFIED in statuses or ("INSI" in methods and has_ins)):
        return QUALIFIED
    return next((s for s in statuses if s not in ("VALI", QUALIFIED)), statuses[0])


def is_qualified(ins: Mapping[str, Any] | None, reliability: Iterable[str]) -> bool:
    """Is this identity qualified? The one answer, for every mapper, the device registry and objections.

    Only an INS whose identity was checked against the national INSi teleservice (reliability ``QUAL``)
    may be used to link a patient nationally: linking on an unchecked INS could merge two people.
    """
    return ins is not None and any(c in QUALIFIED_STATUSES for c in reliability)


def patient_ref_of(
    ipp: str, authority: str, ins: dict[str, Any] | None = None, ins_qualified: bool = False
) -> dict[str, Any]:
    """The canonical PatientRef from an IPP, its authority (an OID or a namespace) and an optional INS
    with its status, shaped as :func:`patient_ref` shapes it from message identifiers (key IPP@authority).
    """
    is_oid = bool(_OID_SHAPE.fullmatch(authority))
    reliability = [QUALIFIED] if ins_qualified else []
    return {
        "key": f"{ipp}@{authority}" if ipp else "",
        "ipp": {
            "id": ipp,
            "authority_name": authority if authority and not is_oid else None,
            "authority_oid": authority if is_oid else None,
        },
        "ins": ins,
        "identity_reliability": QUALIFIED if is_qualified(ins, reliability) else None,
        "ins_qualified": is_qualified(ins, reliability),
    }
