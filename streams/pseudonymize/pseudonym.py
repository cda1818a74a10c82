"""Keyed pseudonyms, per-patient date offsets and the opposition registry's hashes (design §6).

Why keyed: a NIR has 13 significant digits, most of them predictable (sex, birth year and month,
département, commune), so a plain SHA-256 of an INS is reversed by enumerating a few billion candidates
on one GPU in minutes. HMAC-SHA-256 with a secret per destination makes that enumeration impossible for
whoever lacks the key, and two destinations' pseudonyms of the same patient cannot be joined.

Every HMAC input is ``context + "\\x1f" + identifier``: the context (patient, encounter, event, …)
keeps a visit number from ever colliding with an IPP of the same text, and the unit separator cannot
occur in either part, so no two (context, identifier) pairs give the same input.

A pseudonym is ``<key_id>:<base32 of the 32-byte HMAC>`` (RFC 4648 alphabet, lowercase, no padding,
52 characters): the key id says which key made it, so keys can rotate without ambiguity; lowercase
because identifiers that only differ in case are a trap in case-insensitive stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.pseudonymize.keys import Key

SEP = "\x1f"

CONTEXT_PATIENT = "patient"
CONTEXT_ENCOUNTER = "encounter"
CONTEXT_EVENT = "event"
CONTEXT_RECORD = "record"
CONTEXT_DEVICE = "device"
CONTEXT_ORGANIZATION = "organization"
CONTEXT_DATE_SHIFT = "date_shift"
CONTEXT_OPPOSITION = "opposition"
CONTEXT_CHAIN = "chain"

# Contexts a policy may name for the pseudonymize method; the others are used by this module only.
POLICY_CONTEXTS = frozenset(
    {CONTEXT_PATIENT, CONTEXT_ENCOUNTER, CONTEXT_EVENT, CONTEXT_RECORD, CONTEXT_DEVICE, CONTEXT_ORGANIZATION}
)

# The key ring of the opposition registry: one for the whole hub, not one per destination, because an
# objection stops every destination and the registry must survive a destination's key rotation.
OPPOSITION_KEYRING = "opposition"

_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_TABLE = tuple(_ALPHABET[i >> 10] + _ALPHABET[(i >> 5) & 31] + _ALPHABET[i & 31] for i in range(32768))
_B32_SHIFTS = tuple(range(255, -1, -15))


def b32(digest: bytes) -> str:
    """Base32 (RFC 4648, lowercase, unpadded) of a 32-byte digest, 52 characters.

    ``base64.b32encode`` is pure Python in 3.11 and costs more than the HMAC itself; this encodes 15 bits
    per table lookup and gives the same text (a test pins the equality).
    """
    n = int.from_bytes(digest, "big") << 14  # 256 bits + 14 = 270 = 18 groups of 15 bits
    return "".join([_B32_TABLE[(n >> s) & 32767] for s in _B32_SHIFTS])[:52]


def _message(context: str, identifier: str) -> bytes:
    return f"{context}{SEP}{identifier}".encode()


def pseudonym(key: Key, context: str, canonical_identifier: str) -> str:
    """``<key_id>:<base32 HMAC-SHA-256(secret, context \\x1f identifier)>``."""
    return f"{key.key_id}:{b32(key.mac(_message(context, canonical_identifier)))}"


# Pseudonyms remembered per key (patients, visits, objection checks recur in a stream).
MEMO_SIZE = 65536


def remembered_pseudonym(key: Key, context: str, identifier: str) -> str:
    """:func:`pseudonym`, remembered on the key: a dict lookup instead of an HMAC for a recurring
    identifier. Bounded crudely (cleared when full); a stream's working set refills it in seconds."""
    memo = key.memo
    hit = memo.get((context, identifier))
    if hit is None:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        hit = memo[(context, identifier)] = pseudonym(key, context, identifier)
    return hit


def chain(first_pseudonym: str, platform_key: Key) -> str:
    """The second stage: a pseudonym of the hub's pseudonym under a key only the platform holds.

    The hub alone cannot compute it (no platform key) and the platform alone cannot reverse it to a
    NIR (no hub key), so re-identification needs both parties to collude. Runs on the platform side
    (or at a trusted third party); the hub never holds ``platform_key`` in production.
    """
    return f"{platform_key.key_id}:{b32(platform_key.mac(_message(CONTEXT_CHAIN, first_pseudonym)))}"


def national_event_id(key: Key, canonical_event_id: str) -> str:
    """The event id a destination sees: lowercase hex HMAC of the canonical event id, 64 characters.

    Keyed, because canonical ids hash guessable parts (facility, application, a sequential MSH-10); the
    same shape as canonical ids so consumers' deduplication code needs no change; deterministic per key
    so replays collapse, and references between events (a report's results, a retraction's targets)
    resolve inside the platform because they go through the same function.
    """
    return key.mac(_message(CONTEXT_EVENT, canonical_event_id)).hex()


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """The canonical identifier string a patient pseudonym is computed from.

    ``linkable`` is true only for a qualified INS: the one case where the same person gets the same
    pseudonym in every hospital feeding the destination. The value is personal data, hence the repr.
    """

    value: str
    linkable: bool

    def __repr__(self) -> str:
        return f"PatientIdentity(linkable={self.linkable}, value=<redacted>)"

    __str__ = __repr__


class IdentityMissing(ValueError):
    """The patient block lacks what a pseudonym needs; the text names the field, never a value."""


def _authority(block: Mapping[str, Any], fallback_key: str | None = None) -> str:
    authority = block.get("authority_oid") or block.get("authority_name")
    if not authority and fallback_key and "@" in fallback_key:
        authority = fallback_key.rsplit("@", 1)[1]
    if not authority:
        raise IdentityMissing("the local identifier has no assigning authority (OID or namespace)")
    return str(authority)


def ins_form(patient_ref: Mapping[str, Any]) -> str | None:
    ins = patient_ref.get("ins")
    return f"INS|{ins['matricule']}" if ins else None


def ipp_form(patient_ref: Mapping[str, Any]) -> str:
    ipp = patient_ref.get("ipp") or {}
    if not ipp.get("id"):
        raise IdentityMissing("the patient block has no IPP")
    return f"IPP|{_authority(ipp, patient_ref.get('key'))}|{ipp['id']}"


def patient_identity(patient_ref: Mapping[str, Any]) -> PatientIdentity:
    """``INS|<matricule>`` for a qualified INS (linkable), else ``IPP|<authority>|<ipp>`` (local).

    An INS on an unqualified identity is not used: the identity behind it has not been checked against
    the national teleservice, and linking on it could merge two people nationally (design §6).
    """
    if patient_ref.get("ins_qualified") and patient_ref.get("ins"):
        return PatientIdentity(f"INS|{patient_ref['ins']['matricule']}", True)
    return PatientIdentity(ipp_form(patient_ref), False)


def encounter_identity(encounter_ref: Mapping[str, Any]) -> str:
    """``VISIT|<authority>|<visit number>``: a visit number is only unique within its authority."""
    return f"VISIT|{_authority(encounter_ref)}|{encounter_ref['visit_number']}"


def patient_block(key: Key, identity: PatientIdentity) -> dict[str, Any]:
    """The national ``patient`` record: what replaces every identifier of the patient."""
    return {
        "pseudonym": pseudonym(key, CONTEXT_PATIENT, identity.value),
        "linkable": identity.linkable,
        "key_id": key.key_id,
    }


def date_shift_days(key: Key, patient_identity: PatientIdentity | str, max_days: int = 365) -> int:
    """A per-patient offset in ``[-max_days, max_days]``, never 0, the same for every record of a patient.

    Keyed like a pseudonym, so the platform cannot recompute it from the identity, and the same for
    all of a patient's events, so intervals between them (length of stay, time to relapse) survive.
    Zero is excluded: a patient whose dates are not shifted at all would be the weak link.
    """
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    value = patient_identity.value if isinstance(patient_identity, PatientIdentity) else patient_identity
    n = int.from_bytes(key.mac(_message(CONTEXT_DATE_SHIFT, value))[:8], "big") % (2 * max_days)
    return n - max_days if n < max_days else n - max_days + 1
