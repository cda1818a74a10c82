"""The objection's pure parts: validation, registry entries, and the national retractions it emits."""

from __future__ import annotations

from datetime import UTC, datetime

import fastavro
import pytest

from affluent.core.auth import StaticTokens, new_token, token_digest
from affluent.core.errors import ConfigError
from schemas.registry import MAGIC_BYTE, load_schema, parse_schema
from streams.opposition.objection import (
    InvalidObjection,
    Objection,
    national_retractions,
    registry_entries,
    retraction_records,
)
from streams.pseudonymize.opposition import is_opposed
from streams.pseudonymize.policy import load_policy
from streams.pseudonymize.transform import Feed
from tests.support import canonical_samples as cs

AUTHORITY = cs.IPP_AUTHORITY_OID
WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys():
    return cs.load_test_keys()


@pytest.fixture(scope="module")
def feeds(keys):
    return [Feed(load_policy(name), keys) for name in ("hdh", "inca")]


def headers(feeds) -> dict[str, bytes]:
    return {t: bytes([MAGIC_BYTE]) + (7).to_bytes(4, "big") for f in feeds for t in f.topics().values()}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "needs an INS"),
        ({"ins": "123"}, "ins must be"),
        ({"ins": cs.NIR_QUALIFIED[:-2] + "00"}, "ins must be"),
        ({"ipp": cs.IPP}, "authority"),
        ({"authority": AUTHORITY}, "without an ipp"),
        ({"ipp": 12, "authority": AUTHORITY}, "ipp must be a non-empty string"),
        ({"ipp": cs.IPP, "authority": AUTHORITY, "name": cs.FAMILY}, "unknown field(s): name"),
        ([cs.IPP], "JSON object"),
    ],
)
def test_invalid_objections_name_the_field_never_the_value(body, field) -> None:
    with pytest.raises(InvalidObjection) as info:
        Objection.from_json(body)
    assert field in str(info.value)
    for value in (cs.IPP, cs.NIR_QUALIFIED, cs.FAMILY, "123"):
        assert value not in str(info.value).replace("unknown field(s): name", "")


def test_the_objection_never_prints_the_identity() -> None:
    objection = Objection(ins=cs.NIR_QUALIFIED, ipp=cs.IPP, authority=AUTHORITY)
    assert cs.NIR_QUALIFIED not in repr(objection) and cs.IPP not in str(objection)


@pytest.mark.parametrize(
    "ref",
    [
        cs.patient_ref(),  # qualified INS
        cs.patient_ref(qualified=False, nir=cs.NIR_UNQUALIFIED),  # INS present, not qualified
        cs.patient_ref(ins=False, qualified=False),  # IPP only
    ],
)
def test_an_objection_by_ins_and_ipp_stops_the_patient_whatever_their_identity_status(keys, ref) -> None:
    nir = ref["ins"]["matricule"] if ref["ins"] else None
    both = registry_entries(keys, Objection(ins=nir, ipp=cs.IPP, authority=AUTHORITY))
    assert is_opposed(set(both), ref, keys)
    by_ipp = registry_entries(keys, Objection(ipp=cs.IPP, authority=AUTHORITY))
    assert is_opposed(set(by_ipp), ref, keys)
    assert not is_opposed(set(both), cs.patient_ref(ipp=cs.IPP_OTHER, nir=cs.NIR_CORSICA), keys)


def test_an_objection_by_ins_only_stops_events_that_carry_that_ins(keys) -> None:
    entries = set(registry_entries(keys, Objection(ins=cs.NIR_QUALIFIED)))
    assert is_opposed(entries, cs.patient_ref(qualified=False), keys)  # even when not qualified
    assert not is_opposed(entries, cs.patient_ref(ins=False, qualified=False), keys)


def test_retractions_name_every_pseudonym_the_patient_was_published_under(keys, feeds) -> None:
    objection = Objection(ins=cs.NIR_QUALIFIED, ipp=cs.IPP, authority=AUTHORITY)
    entries = registry_entries(keys, objection)
    records = retraction_records(objection, WHEN, "dpo-test", entries, [(0, 10), (0, 11)])
    canonical_schema = parse_schema(load_schema("canonical/retraction"))
    for record in records:
        assert fastavro.validation.validate(record, canonical_schema, raise_errors=True)
        assert (
            record["kind"] == "OPPOSITION" and record["envelope"]["lineage"]["topic"] == "control.opposition"
        )
    out = national_retractions(feeds, keys, headers(feeds), records)

    # The pseudonyms a national feed gave this patient's ordinary events, qualified (INS) and before
    # qualification (IPP), under every key each destination keeps (hdh: current and retired).
    published = set()
    for feed in feeds:
        for key in keys.all(feed.policy.key_name):
            from streams.pseudonymize.keys import PinnedKey
            from streams.pseudonymize.transform import apply

            pinned = PinnedKey(keys, feed.policy.key_name, key)
            for ref in (cs.patient_ref(), cs.patient_ref(qualified=False)):
                national = apply(feed.policy, pinned, "patient", cs.sample("patient", patient=ref))
                assert national is not None
                published.add((feed.destination, national.key))
    assert {(r.destination, r.key.decode()) for r in out} == published
    assert len(out) == 2 * (len(keys.all("hdh")) + len(keys.all("inca")))
    assert {r.topic for r in out} == {"national.hdh.retraction.v1", "national.inca.retraction.v1"}
    for r in out:
        assert r.value[:5] == headers(feeds)[r.topic]
        for canary in (cs.NIR_QUALIFIED, cs.IPP, AUTHORITY, "dpo-test@"):
            assert canary.encode() not in r.value and canary.encode() not in r.key


def test_a_later_objection_is_a_new_event_a_replay_is_not(keys) -> None:
    objection = Objection(ipp=cs.IPP, authority=AUTHORITY)
    entries = registry_entries(keys, objection)
    first = retraction_records(objection, WHEN, "dpo", entries, [(0, 1)])
    replay = retraction_records(objection, WHEN, "dpo", entries, [(0, 1)])
    later = retraction_records(objection, WHEN.replace(day=25), "dpo", entries, [(0, 9)])
    assert first[0]["envelope"]["event_id"] == replay[0]["envelope"]["event_id"]
    assert first[0]["envelope"]["event_id"] != later[0]["envelope"]["event_id"]


def test_static_tokens_are_kept_as_digests_and_bound_to_their_principal() -> None:
    token, digest = new_token()
    other, other_digest = new_token()
    tokens = StaticTokens({"dpo-a": digest, "dpo-b": other_digest})
    assert tokens.principal(f"Bearer {token}") == "dpo-a"
    assert tokens.principal(f"bearer {other}") == "dpo-b"
    assert tokens.principal(f"Bearer {token}x") is None
    assert tokens.principal(f"Basic {token}") is None
    assert tokens.principal(None) is None and tokens.principal("Bearer ") is None
    assert digest == token_digest(token) and token not in repr(vars(tokens))


@pytest.mark.parametrize("digests", [{}, {"dpo": "not-hex"}, {"dpo a": "0" * 64}, {"dpo": "0" * 63}])
def test_token_configuration_is_checked_when_loaded(digests) -> None:
    with pytest.raises(ConfigError):
        StaticTokens(digests)
