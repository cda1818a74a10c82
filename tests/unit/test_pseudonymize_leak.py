"""Leak tests at the unit level: canonical records full of canaries go in; no canary comes out — not in
the national record, not in its Avro bytes (UTF-8 or Latin-1), not in an exception or its traceback."""

from __future__ import annotations

import contextlib
import io
import traceback
from typing import Any

import fastavro
import pytest
import yaml

from affluent.core.errors import SchemaError
from schemas.registry import load_schema, parse_schema
from streams.pseudonymize import Feed, TransformError, apply, load_policy, parse_policy
from tests.support.canonical_samples import (
    CANARIES,
    CANARY_VARIANTS,
    FAMILY,
    GIVEN,
    NIR_QUALIFIED,
    all_samples,
    load_test_keys,
    sample,
)

KEYS = load_test_keys()
FEEDS = {name: Feed(load_policy(name), KEYS) for name in ("hdh", "inca")}


def _canonical_round_trip(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """What the agent will really see: the record as decoded from canonical.<kind>."""
    schema = parse_schema(load_schema(f"canonical/{kind}"))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    decoded: dict[str, Any] = fastavro.schemaless_reader(buf, schema)
    return decoded


def _canaries_of(record: dict[str, Any]) -> list[str]:
    """The fixed canaries plus this record's canonical ids (the national ones must be keyed, not copies)."""
    extra = [record["envelope"]["event_id"]]
    extra += record.get("result_event_ids", []) + record.get("target_event_ids", [])
    return list(CANARIES) + list(CANARY_VARIANTS) + extra


def _encodings(canary: str) -> list[bytes]:
    out = [canary.encode("utf-8")]
    with contextlib.suppress(UnicodeEncodeError):  # Œ has no Latin-1 form: it cannot appear in such bytes
        out.append(canary.encode("latin-1"))
    return out


def _assert_clean(text: str, data: bytes, canaries: list[str]) -> None:
    folded = text.casefold()
    for canary in canaries:
        assert canary not in text, f"canary {canary!r} leaked into the record"
        assert canary.casefold() not in folded, f"canary {canary!r} leaked (case-folded)"
        for encoded in _encodings(canary):
            assert encoded not in data, f"canary {canary!r} leaked into the Avro bytes"


CASES = [
    pytest.param(dest, kind, record, id=f"{dest}-{kind}-{i}")
    for dest in FEEDS
    for i, (kind, record) in enumerate(all_samples())
]


@pytest.mark.parametrize(("dest", "kind", "record"), CASES)
def test_no_canary_reaches_a_national_record_or_its_bytes(dest, kind, record):
    feed = FEEDS[dest]
    canonical = _canonical_round_trip(kind, record)
    canaries = _canaries_of(canonical)
    # the input really is full of canaries, otherwise this test proves nothing
    assert any(c in str(canonical) for c in canaries)
    national = feed.apply(kind, canonical)
    if national is None:
        return
    schema = parse_schema(load_schema(feed.policy.schema_name_for(kind)))
    fast = feed.encode(national)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, national.record)
    assert fast == buf.getvalue()
    decoded = fastavro.schemaless_reader(io.BytesIO(fast), schema)
    text = " ".join((str(national.record), repr(national), str(decoded), national.key, national.topic))
    _assert_clean(text, fast + national.key.encode(), canaries)


def test_the_canaries_are_in_the_samples():
    everything = " ".join(str(_canonical_round_trip(kind, record)) for kind, record in all_samples())
    missing = [c for c in CANARIES if c not in everything]
    assert missing == []


# ------------------------------------------------------------------ exceptions

FAILING_POLICY = """
destination: failing
version: 1
key: {name: hdh}
date_shift: {max_days: 30}
common:
  envelope.event_id: {method: pseudonymize, context: event}
  envelope.event_type: keep
  patient: {method: pseudonymize, context: patient}
types:
  patient:
    birth_date: {method: generalize, to: year_month}
    death_date: date_shift
    sex: keep
  encounter:
    encounter: {method: pseudonymize, context: encounter}
    status: keep
"""


def _exception_texts(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), " ".join(map(str, exc.args)), "".join(traceback.format_exception(exc))]
    return " ".join(parts)


def _assert_exception_clean(exc: BaseException) -> None:
    assert exc.__cause__ is None and exc.__context__ is None, (
        "the failing value's exception must not be chained"
    )
    text = _exception_texts(exc)
    for canary in CANARIES + CANARY_VARIANTS:
        assert canary not in text and canary.casefold() not in text.casefold(), (
            f"canary {canary!r} in exception"
        )


@pytest.mark.parametrize(
    ("kind", "changes", "path"),
    [
        ("patient", {"birth_date": f"{FAMILY} {GIVEN[0]}"}, "birth_date"),
        ("patient", {"death_date": f"né le {NIR_QUALIFIED}"}, "death_date"),
        (
            "encounter",
            {
                "encounter": {
                    "visit_number": "VN-CANARY-20260314-77",
                    "authority_name": None,
                    "authority_oid": None,
                }
            },
            "encounter",
        ),
    ],
)
def test_exceptions_from_a_failing_policy_carry_no_canary(kind, changes, path):
    policy = parse_policy(FAILING_POLICY, "failing.yaml")
    record = sample(kind, **changes)
    with pytest.raises(TransformError) as info:
        apply(policy, KEYS, kind, record)
    assert info.value.path == path and info.value.kind == kind
    _assert_exception_clean(info.value)


def test_a_patient_without_identity_fails_without_data():
    record = sample("patient")
    record["patient"] = {
        "key": f"{FAMILY}",
        "ipp": {"id": GIVEN[0], "authority_name": None, "authority_oid": None},
    }
    with pytest.raises(TransformError, match="no assigning authority") as info:
        FEEDS["hdh"].apply("patient", record)
    _assert_exception_clean(info.value)


def test_a_record_without_envelope_fails_without_data():
    record = sample("observation")
    del record["envelope"]
    with pytest.raises(TransformError) as info:
        FEEDS["hdh"].apply("observation", record)
    _assert_exception_clean(info.value)


def test_an_encoding_failure_carries_no_canary():
    feed = FEEDS["hdh"]
    national = feed.apply("patient", sample("patient"))
    assert national
    national.record["sex"] = FAMILY  # not a symbol of the enum
    national.record["deceased"] = GIVEN[1]
    with pytest.raises(SchemaError) as info:
        feed.encode(national)
    text = _exception_texts(info.value)
    assert FAMILY not in text and GIVEN[1] not in text


def test_policy_errors_never_echo_yaml_values_beyond_names():
    bad = yaml.safe_dump(
        {
            "destination": "hdh",
            "version": 1,
            "key": {"name": "hdh"},
            "types": {"patient": {"names[].family": "keep"}},
            "common": {},
        }
    )
    with pytest.raises(Exception) as info:
        parse_policy(bad, "bad.yaml")
    assert FAMILY not in str(info.value)
