"""Opposition, decided in one place: which identity forms an objection is stored under, and whether a
canonical record may go on to the national destinations.

A patient's right to object (RGPD art. 21, Code de la santé publique L.1461-1) must be enforced the same
way wherever a record could leave: the pseudonymize stage, the opposition service's retractions and the
demo's accounting all ask :func:`withheld` or the helpers below, so "where is opposition enforced?" has
one answer. Objections are stored only as keyed hashes (:func:`opposition_key`), never as identities.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any

from streams.pseudonymize.keys import Key, KeyProvider
from streams.pseudonymize.pseudonym import (
    CONTEXT_OPPOSITION,
    OPPOSITION_KEYRING,
    ins_form,
    ipp_form,
    remembered_pseudonym,
)

# Anything answering ``in`` (a set, the compacted registry view) or a callable that returns a truthy
# value for a registered entry.
OppositionLookup = Container[str] | Callable[[str], object]


def identity_forms(patient_ref: Mapping[str, Any]) -> tuple[str, ...]:
    """Every identity an objection may have been registered under: the INS whether qualified or not
    (an objection must err on the side of stopping data) and the local IPP."""
    forms = [ipp_form(patient_ref)]
    ins = ins_form(patient_ref)
    if ins is not None:
        forms.insert(0, ins)
    return tuple(forms)


def opposition_key(keys: KeyProvider, identity: str, key: Key | None = None) -> str:
    """The only form in which an objection is stored: ``<key_id>:<HMAC>`` of the identity string.

    The compacted ``control.opposition`` topic is read by every worker and kept forever; holding
    identities in clear there would turn the registry of people who refused research into a list of
    them. ``key`` defaults to the current opposition key.
    """
    use = key if key is not None else keys.current(OPPOSITION_KEYRING)
    return remembered_pseudonym(use, CONTEXT_OPPOSITION, identity)


def opposition_keys(keys: KeyProvider, patient_ref: Mapping[str, Any]) -> tuple[str, ...]:
    """The registry entries to write when this patient objects (current opposition key)."""
    key = keys.current(OPPOSITION_KEYRING)
    return tuple(opposition_key(keys, form, key) for form in identity_forms(patient_ref))


def is_opposed(
    table_lookup: OppositionLookup,
    patient_ref: Mapping[str, Any],
    keys: KeyProvider,
) -> bool:
    """Whether the registry holds an objection under the INS form or the IPP form of this patient.

    Checked under every opposition key still kept, because entries written before a rotation cannot be
    re-keyed (the registry holds no identity to re-hash). ``table_lookup`` is anything answering ``in``
    (a set, the compacted registry view) or a callable returning a truthy value for a registered entry.
    """
    forms = identity_forms(patient_ref)
    contains: Callable[[str], object]
    contains = table_lookup.__contains__ if isinstance(table_lookup, Container) else table_lookup
    for key in keys.all(OPPOSITION_KEYRING):
        for form in forms:
            if contains(opposition_key(keys, form, key)):
                return True
    return False


def withheld(kind: str, record: Mapping[str, Any], lookup: OppositionLookup, keys: KeyProvider) -> bool:
    """Whether opposition keeps this canonical record from every destination.

    The one decision: a record of a patient registered as objecting goes nowhere, except the OPPOSITION
    retraction itself, which is how the platforms learn to delete what they already hold. Raises
    :class:`streams.pseudonymize.pseudonym.IdentityMissing` when the record names no usable identity.
    """
    opposed = is_opposed(lookup, record["patient"], keys)
    return opposed and not (kind == "retraction" and record.get("kind") == "OPPOSITION")
