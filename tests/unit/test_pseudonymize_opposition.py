"""The opposition registry's keys: objections stored only as keyed hashes, matched by INS or by IPP."""

from __future__ import annotations

import pytest

from streams.pseudonymize.keys import Key, KeyConfigError, StaticKeyProvider
from streams.pseudonymize.opposition import identity_forms, is_opposed, opposition_key, opposition_keys
from streams.pseudonymize.pseudonym import (
    CONTEXT_PATIENT,
    OPPOSITION_KEYRING,
    patient_identity,
    pseudonym,
)
from tests.support.canonical_samples import (
    CANARIES,
    IPP,
    IPP_AUTHORITY_OID,
    NIR_QUALIFIED,
    load_test_keys,
    patient_ref,
)

KEYS = load_test_keys()


def test_an_objection_is_registered_under_the_ins_and_the_ipp_forms():
    assert identity_forms(patient_ref()) == (f"INS|{NIR_QUALIFIED}", f"IPP|{IPP_AUTHORITY_OID}|{IPP}")
    assert identity_forms(patient_ref(ins=False, qualified=False)) == (f"IPP|{IPP_AUTHORITY_OID}|{IPP}",)
    entries = opposition_keys(KEYS, patient_ref())
    assert len(entries) == 2
    assert all(e.startswith(KEYS.current(OPPOSITION_KEYRING).key_id + ":") for e in entries)


def test_registry_entries_hold_no_identity_and_differ_from_destination_pseudonyms():
    entries = opposition_keys(KEYS, patient_ref())
    for canary in CANARIES:
        assert all(canary not in entry for entry in entries)
    national = pseudonym(KEYS.current("hdh"), CONTEXT_PATIENT, patient_identity(patient_ref()).value)
    assert national.split(":")[1] not in {e.split(":")[1] for e in entries}
    same_key_other_context = pseudonym(
        KEYS.current(OPPOSITION_KEYRING), CONTEXT_PATIENT, f"INS|{NIR_QUALIFIED}"
    )
    assert same_key_other_context not in entries


def test_opposition_key_is_deterministic():
    identity = f"INS|{NIR_QUALIFIED}"
    assert opposition_key(KEYS, identity) == opposition_key(KEYS, identity)
    assert opposition_key(KEYS, identity) != opposition_key(KEYS, f"IPP|{IPP_AUTHORITY_OID}|{IPP}")


def test_objection_by_ins_stops_the_patient_even_on_an_unqualified_identity():
    registry = {opposition_key(KEYS, f"INS|{NIR_QUALIFIED}")}
    assert is_opposed(registry, patient_ref(), KEYS)
    assert is_opposed(registry, patient_ref(qualified=False), KEYS)
    assert is_opposed(registry, patient_ref(ipp="0000000001"), KEYS)  # same INS, another IPP
    assert not is_opposed(registry, patient_ref(ins=False, qualified=False), KEYS)


def test_objection_by_ipp_stops_the_patient_with_or_without_ins():
    registry = {opposition_key(KEYS, f"IPP|{IPP_AUTHORITY_OID}|{IPP}")}
    assert is_opposed(registry, patient_ref(ins=False, qualified=False), KEYS)
    assert is_opposed(registry, patient_ref(), KEYS)
    assert not is_opposed(registry, patient_ref(ipp="0000000001", ins=False, qualified=False), KEYS)


def test_lookup_may_be_a_mapping_a_set_or_a_callable():
    entries = opposition_keys(KEYS, patient_ref())
    table = dict.fromkeys(entries, b"1")
    assert is_opposed(table, patient_ref(), KEYS)
    assert is_opposed(set(entries), patient_ref(), KEYS)
    assert is_opposed(lambda entry: table.get(entry), patient_ref(), KEYS)
    assert not is_opposed(lambda entry: None, patient_ref(), KEYS)


def test_entries_written_before_an_opposition_key_rotation_still_match():
    old = Key("opp-1", b"TEST-ONLY-NOT-A-SECRET/opposition/1/000000000000", OPPOSITION_KEYRING)
    new = Key("opp-2", b"TEST-ONLY-NOT-A-SECRET/opposition/2/000000000000", OPPOSITION_KEYRING)
    before = StaticKeyProvider({OPPOSITION_KEYRING: [old]})
    after = StaticKeyProvider({OPPOSITION_KEYRING: [new, old]})
    registry = set(opposition_keys(before, patient_ref()))
    assert is_opposed(registry, patient_ref(), after)
    assert not set(opposition_keys(after, patient_ref())) & registry  # new entries use the new key
    dropped_old = StaticKeyProvider({OPPOSITION_KEYRING: [new]})
    assert not is_opposed(registry, patient_ref(), dropped_old)  # why retired opposition keys must be kept


def test_no_opposition_key_is_an_error_naming_the_ring():
    with pytest.raises(KeyConfigError, match="destination opposition"):
        is_opposed(set(), patient_ref(), StaticKeyProvider({}))
