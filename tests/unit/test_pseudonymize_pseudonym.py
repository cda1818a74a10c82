"""Pseudonyms, identities, rotation, the second stage and per-patient date offsets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pseudonymize.keys import Key, StaticKeyProvider
from streams.pseudonymize.pseudonym import (
    CONTEXT_ENCOUNTER,
    CONTEXT_EVENT,
    CONTEXT_PATIENT,
    CONTEXT_RECORD,
    IdentityMissing,
    PatientIdentity,
    b32,
    chain,
    date_shift_days,
    encounter_identity,
    national_event_id,
    patient_block,
    patient_identity,
    pseudonym,
)
from tests.support.canonical_samples import (
    ENCOUNTER_REF,
    IPP,
    IPP_AUTHORITY_NAME,
    IPP_AUTHORITY_OID,
    NIR_QUALIFIED,
    load_test_keys,
    patient_ref,
)

KEYS = load_test_keys()
HDH = KEYS.current("hdh")
HDH_OLD = KEYS.by_id("hdh", "TEST-ONLY-NOT-A-SECRET-hdh-k1")
INCA = KEYS.current("inca")
PLATFORM = KEYS.current("hdh_platform")
PSEUDONYM = re.compile(r"(?P<key_id>[A-Za-z0-9._-]+):(?P<body>[a-z2-7]{52})")


def test_pseudonym_is_key_id_then_unpadded_lowercase_base32_of_the_hmac():
    value = pseudonym(HDH, CONTEXT_PATIENT, f"INS|{NIR_QUALIFIED}")
    match = PSEUDONYM.fullmatch(value)
    assert match and match["key_id"] == HDH.key_id
    digest = hmac.digest(HDH.secret, f"patient\x1fINS|{NIR_QUALIFIED}".encode(), "sha256")
    assert match["body"] == base64.b32encode(digest).decode().rstrip("=").lower()


@given(st.binary(min_size=32, max_size=32))
def test_fast_base32_equals_the_standard_library(digest):
    assert b32(digest) == base64.b32encode(digest).decode().rstrip("=").lower()


def test_pseudonyms_are_deterministic_per_key_and_context():
    ident = f"INS|{NIR_QUALIFIED}"
    assert pseudonym(HDH, CONTEXT_PATIENT, ident) == pseudonym(HDH, CONTEXT_PATIENT, ident)
    variants = {
        pseudonym(HDH, CONTEXT_PATIENT, ident),
        pseudonym(INCA, CONTEXT_PATIENT, ident),  # another destination
        pseudonym(HDH_OLD, CONTEXT_PATIENT, ident),  # another key of the same destination
        pseudonym(HDH, CONTEXT_RECORD, ident),  # another context
        pseudonym(HDH, CONTEXT_ENCOUNTER, ident),
    }
    assert len(variants) == 5
    bodies = {v.split(":", 1)[1] for v in variants}
    assert len(bodies) == 5


def test_the_separator_keeps_contexts_and_identifiers_apart():
    assert pseudonym(HDH, "patient", "x|1") != pseudonym(HDH, "patientx", "|1")


def test_a_bare_hash_is_never_what_comes_out():
    ident = f"INS|{NIR_QUALIFIED}"
    body = pseudonym(HDH, CONTEXT_PATIENT, ident).split(":", 1)[1]
    for plain in (ident, NIR_QUALIFIED, f"patient\x1f{ident}"):
        assert body != base64.b32encode(hashlib.sha256(plain.encode()).digest()).decode().rstrip("=").lower()


# ------------------------------------------------------------------ patient identity


def test_a_qualified_ins_gives_a_nationally_linkable_identity():
    identity = patient_identity(patient_ref())
    assert identity == PatientIdentity(f"INS|{NIR_QUALIFIED}", True)


def test_an_unqualified_ins_is_not_used_and_the_identity_is_local():
    identity = patient_identity(patient_ref(qualified=False))
    assert identity == PatientIdentity(f"IPP|{IPP_AUTHORITY_OID}|{IPP}", False)


def test_without_ins_the_ipp_and_its_authority_identify_locally():
    assert patient_identity(patient_ref(ins=False, qualified=False)).linkable is False


def test_ins_qualified_flag_without_an_ins_block_falls_back_to_the_ipp():
    ref = patient_ref(ins=False) | {"ins_qualified": True}
    assert patient_identity(ref).value.startswith("IPP|")


def test_the_authority_is_the_oid_then_the_namespace_then_the_key_suffix():
    ref = patient_ref(ins=False)
    ref["ipp"] = {"id": IPP, "authority_name": IPP_AUTHORITY_NAME, "authority_oid": None}
    assert patient_identity(ref).value == f"IPP|{IPP_AUTHORITY_NAME}|{IPP}"
    ref["ipp"] = {"id": IPP, "authority_name": None, "authority_oid": None}
    assert patient_identity(ref).value == f"IPP|{IPP_AUTHORITY_OID}|{IPP}"  # from key IPP@authority


def test_a_missing_authority_or_ipp_is_an_error_without_the_value():
    with pytest.raises(IdentityMissing, match="no assigning authority") as info:
        patient_identity({"key": IPP, "ipp": {"id": IPP}})
    assert IPP not in str(info.value)
    with pytest.raises(IdentityMissing, match="no IPP"):
        patient_identity({"key": "x@y", "ipp": {"id": ""}})


def test_the_same_ipp_under_two_authorities_gives_two_patients():
    a = patient_ref(ins=False)
    b = patient_ref(ins=False)
    b["ipp"] = dict(b["ipp"], authority_oid="1.2.250.1.999.9.9.9")
    assert patient_identity(a) != patient_identity(b)


def test_patient_identity_repr_hides_the_identifier():
    identity = patient_identity(patient_ref())
    assert NIR_QUALIFIED not in repr(identity) and NIR_QUALIFIED not in str(identity)


def test_patient_block_carries_pseudonym_linkability_and_key_id():
    block = patient_block(HDH, patient_identity(patient_ref()))
    assert block == {
        "pseudonym": pseudonym(HDH, CONTEXT_PATIENT, f"INS|{NIR_QUALIFIED}"),
        "linkable": True,
        "key_id": HDH.key_id,
    }


def test_linkable_pseudonyms_agree_across_hospitals_local_ones_do_not():
    hospital_a = patient_ref()
    hospital_b = patient_ref(ipp="5550001112")
    hospital_b["ipp"] = dict(hospital_b["ipp"], authority_oid="1.2.250.1.999.7.7.7")
    assert patient_block(HDH, patient_identity(hospital_a)) == patient_block(
        HDH, patient_identity(hospital_b)
    )
    hospital_a["ins_qualified"] = hospital_b["ins_qualified"] = False
    assert patient_block(HDH, patient_identity(hospital_a)) != patient_block(
        HDH, patient_identity(hospital_b)
    )


def test_encounter_identity_is_authority_and_visit_number():
    assert (
        encounter_identity(ENCOUNTER_REF)
        == f"VISIT|{ENCOUNTER_REF['authority_oid']}|{ENCOUNTER_REF['visit_number']}"
    )
    with pytest.raises(IdentityMissing):
        encounter_identity({"visit_number": "V1", "authority_name": None, "authority_oid": None})


# ------------------------------------------------------------------ rotation


def test_key_rotation_new_key_new_prefix_old_key_still_resolvable():
    ident = patient_identity(patient_ref()).value
    before = pseudonym(HDH_OLD, CONTEXT_PATIENT, ident)
    after = pseudonym(KEYS.current("hdh"), CONTEXT_PATIENT, ident)
    assert before.startswith("TEST-ONLY-NOT-A-SECRET-hdh-k1:")
    assert after.startswith("TEST-ONLY-NOT-A-SECRET-hdh-k2:")
    assert before.split(":")[1] != after.split(":")[1]
    old_id = before.split(":", 1)[0]
    assert pseudonym(KEYS.by_id("hdh", old_id), CONTEXT_PATIENT, ident) == before


# ------------------------------------------------------------------ second stage


def test_chain_is_a_second_keyed_stage_under_the_platform_key():
    first = pseudonym(HDH, CONTEXT_PATIENT, f"INS|{NIR_QUALIFIED}")
    second = chain(first, PLATFORM)
    assert second == chain(first, PLATFORM)
    assert second.startswith(PLATFORM.key_id + ":") and PSEUDONYM.fullmatch(second)
    assert second != chain(first, HDH)  # the hub's own key cannot produce it
    other_platform = Key("platform-2", b"TEST-ONLY-NOT-A-SECRET/platform/2/000000000000", "hdh_platform")
    assert chain(first, other_platform) != second


# ------------------------------------------------------------------ event ids


def test_national_event_ids_are_keyed_hex_and_deterministic():
    canonical = "a" * 64
    value = national_event_id(HDH, canonical)
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert value == national_event_id(HDH, canonical)
    assert value != national_event_id(INCA, canonical)
    assert value != hashlib.sha256(canonical.encode()).hexdigest()
    assert value == hmac.digest(HDH.secret, f"{CONTEXT_EVENT}\x1f{canonical}".encode(), "sha256").hex()


# ------------------------------------------------------------------ date shift


def test_date_shift_is_the_same_for_the_same_patient_and_key():
    identity = patient_identity(patient_ref())
    offset = date_shift_days(HDH, identity, 180)
    assert offset == date_shift_days(HDH, identity, 180) == date_shift_days(HDH, identity.value, 180)
    assert -180 <= offset <= 180 and offset != 0


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=400))
def test_date_shift_stays_in_range_and_never_zero(identity, max_days):
    offset = date_shift_days(HDH, identity, max_days)
    assert -max_days <= offset <= max_days and offset != 0


def test_date_shift_offsets_spread_over_the_range_and_depend_on_the_key():
    offsets = {date_shift_days(HDH, f"IPP|x|{i}", 30) for i in range(2000)}
    assert offsets == set(range(-30, 0)) | set(range(1, 31))
    same = sum(
        date_shift_days(HDH, f"IPP|x|{i}", 365) == date_shift_days(INCA, f"IPP|x|{i}", 365)
        for i in range(200)
    )
    assert same < 10


def test_date_shift_needs_a_positive_range():
    with pytest.raises(ValueError, match="at least 1"):
        date_shift_days(HDH, "x", 0)


def test_pseudonym_memo_is_per_key():
    a = Key("same-id", b"TEST-ONLY-NOT-A-SECRET/memo/a/0000000000000000", "hdh")
    b = Key("same-id", b"TEST-ONLY-NOT-A-SECRET/memo/b/0000000000000000", "hdh")
    provider_a = StaticKeyProvider({"hdh": [a]})
    provider_b = StaticKeyProvider({"hdh": [b]})
    assert provider_a.current("hdh").memo is not provider_b.current("hdh").memo


def test_records_before_and_after_a_rotation_carry_their_key_ids():
    """The feed as the worker runs it: before the rotation the ring is [k1], after it [k2 (active), k1]."""
    from streams.pseudonymize.keys import StaticKeyProvider
    from streams.pseudonymize.policy import load_policy
    from streams.pseudonymize.transform import Feed
    from tests.support.canonical_samples import sample

    before_keys = StaticKeyProvider({**{d: KEYS.all(d) for d in ("inca", "opposition")}, "hdh": (HDH_OLD,)})
    before = Feed(load_policy("hdh"), before_keys)
    after = Feed(load_policy("hdh"), KEYS)
    record = sample("observation")
    first, again = before.apply("observation", record), before.apply("observation", record)
    later = after.apply("observation", record)
    assert first is not None and again is not None and later is not None
    assert first.key == again.key and first.record == again.record  # same patient, same key: same output
    assert first.key.startswith(f"{HDH_OLD.key_id}:") and first.record["patient"]["key_id"] == HDH_OLD.key_id
    current = KEYS.current("hdh").key_id
    assert later.key.startswith(f"{current}:") and later.record["patient"]["key_id"] == current
    assert later.key != first.key
    assert later.record["envelope"]["event_id"] != first.record["envelope"]["event_id"]
