"""The transform: realistic canonical records of every kind become national records that fit their
national schema, with deterministic ids, working references and the policy's generalizations."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from affluent.core.errors import ConfigError, SchemaError
from schemas import catalog as cat
from schemas.fastwriter import NotCompilable, compile_writer
from schemas.registry import load_schema, parse_schema
from streams.pseudonymize import Feed, TransformError, apply, load_policy, parse_policy
from streams.pseudonymize.methods import RecordContext
from streams.pseudonymize.policy import derive_schema, shipped_policy_path
from streams.pseudonymize.pseudonym import national_event_id, patient_identity
from streams.pseudonymize.transform import NationalEncoder
from tests.support.canonical_samples import (
    ENCOUNTER_REF,
    all_samples,
    device_observation,
    load_test_keys,
    patient_ref,
    sample,
)

KEYS = load_test_keys()
POLICIES = {name: load_policy(name) for name in ("hdh", "inca")}
FEEDS = {name: Feed(policy, KEYS) for name, policy in POLICIES.items()}
AVRO_DIR = Path(cat.__file__).parent / "avro"
CASES = [
    pytest.param(dest, kind, record, id=f"{dest}-{kind}-{i}")
    for dest in POLICIES
    for i, (kind, record) in enumerate(all_samples())
]


def _fastavro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


@pytest.mark.parametrize(("dest", "kind", "record"), CASES)
def test_every_sample_fits_its_national_schema(dest, kind, record):
    feed = FEEDS[dest]
    national = feed.apply(kind, record)
    if national is None:
        assert not feed.sends(kind) or not feed.policy.selects(kind, record)
        return
    schema = parse_schema(load_schema(feed.policy.schema_name_for(kind)))
    assert fastavro.validate(national.record, schema, strict=True)
    body = _fastavro_bytes(schema, national.record)
    assert feed.encode(national) == body  # the compiled encoder writes fastavro's bytes
    back = fastavro.schemaless_reader(io.BytesIO(body), schema)
    assert back == national.record
    assert national.topic == f"national.{dest}.{kind}.v1"
    assert national.key == national.record["patient"]["pseudonym"]
    assert national.record["envelope"]["schema_version"] == 1


@pytest.mark.parametrize(("dest", "kind", "record"), CASES)
def test_the_generated_transform_equals_the_reference_closures(dest, kind, record):
    policy = POLICIES[dest]
    if not policy.sends(kind):
        return
    plan = policy.plans[kind]
    key = KEYS.current(policy.key_name)
    ctx = RecordContext(key, patient_identity(record["patient"]), record["envelope"], policy.max_shift_days)
    assert plan.build(record, ctx) == plan.reference_build(record, ctx)


def test_the_transform_does_not_touch_the_canonical_record():
    record = sample("patient")
    before = copy.deepcopy(record)
    FEEDS["hdh"].apply("patient", record)
    assert record == before


def test_output_is_deterministic():
    a = FEEDS["hdh"].apply("observation", sample("observation"))
    b = FEEDS["hdh"].apply("observation", sample("observation"))
    assert a == b and FEEDS["hdh"].encode(a) == FEEDS["hdh"].encode(b)  # type: ignore[arg-type]


def test_patient_hdh_content():
    out = FEEDS["hdh"].apply("patient", sample("patient"))
    assert out is not None
    record = out.record
    assert record["birth_date"] == "1984-07"
    assert record["birth_place_code"] == "25"
    assert record["death_date"] == "2025-11"
    assert record["addresses"] == [
        {"use": "home", "postal_code": "39", "country": "FRA"},
        {"use": "work", "postal_code": None, "country": "CHE"},
    ]
    assert record["patient"]["linkable"] is True
    assert record["patient"]["key_id"] == "TEST-ONLY-NOT-A-SECRET-hdh-k2"
    assert set(record) == {
        "envelope",
        "patient",
        "birth_date",
        "birth_place_code",
        "sex",
        "addresses",
        "deceased",
        "death_date",
    }
    assert "lineage" not in record["envelope"]


def test_patient_inca_content():
    out = FEEDS["inca"].apply("patient", sample("patient"))
    assert out is not None
    assert set(out.record) == {"envelope", "patient", "birth_date", "sex"}
    assert out.record["birth_date"] == "1984-07" and out.record["sex"] == "female"
    assert set(out.record["envelope"]) == {
        "event_id",
        "event_type",
        "source",
        "event_time",
        "event_time_precision",
        "schema_version",
    }
    assert out.record["envelope"]["source"] == {"facility": "CHU-BESANCON", "protocol": "hl7v2"}


def test_unqualified_and_ipp_only_patients_get_local_pseudonyms():
    qualified = FEEDS["hdh"].apply("patient", sample("patient"))
    unqualified = FEEDS["hdh"].apply("patient", sample("patient", patient=patient_ref(qualified=False)))
    ipp_only = FEEDS["hdh"].apply(
        "patient", sample("patient", patient=patient_ref(ins=False, qualified=False))
    )
    assert qualified and unqualified and ipp_only
    assert qualified.linkable and not unqualified.linkable and not ipp_only.linkable
    assert unqualified.key == ipp_only.key != qualified.key  # both derived from the IPP


def test_destinations_see_unrelated_pseudonyms_and_event_ids():
    hdh = FEEDS["hdh"].apply("condition", sample("condition"))
    inca = FEEDS["inca"].apply("condition", sample("condition"))
    assert hdh and inca
    assert hdh.key.split(":")[1] != inca.key.split(":")[1]
    assert hdh.record["envelope"]["event_id"] != inca.record["envelope"]["event_id"]


def test_event_ids_and_references_resolve_inside_the_platform():
    report = sample("diagnostic_report")
    first_result = sample("observation")
    first_result["envelope"]["event_id"] = report["result_event_ids"][0]
    national_report = FEEDS["hdh"].apply("diagnostic_report", report)
    national_obs = FEEDS["hdh"].apply("observation", first_result)
    assert national_report and national_obs
    assert national_report.record["result_event_ids"][0] == national_obs.record["envelope"]["event_id"]
    key = KEYS.current("hdh")
    assert national_obs.record["envelope"]["event_id"] == national_event_id(
        key, first_result["envelope"]["event_id"]
    )
    retraction = sample("retraction", kind="DELETE", target_event_ids=[first_result["envelope"]["event_id"]])
    national_retraction = FEEDS["hdh"].apply("retraction", retraction)
    assert national_retraction
    assert national_retraction.record["target_event_ids"] == [national_obs.record["envelope"]["event_id"]]


def test_events_of_one_visit_share_the_visit_pseudonym():
    a = FEEDS["hdh"].apply("observation", sample("observation"))
    b = FEEDS["hdh"].apply("procedure", sample("procedure"))
    c = FEEDS["hdh"].apply(
        "procedure", sample("procedure", encounter=dict(ENCOUNTER_REF, visit_number="V-OTHER"))
    )
    assert a and b and c
    assert a.record["encounter"] == b.record["encounter"] != c.record["encounter"]
    assert FEEDS["hdh"].apply("observation", device_observation()).record["encounter"] is None  # type: ignore[union-attr]


def test_merge_retraction_carries_both_pseudonyms():
    out = FEEDS["hdh"].apply("retraction", sample("retraction"))
    assert out
    assert out.record["kind"] == "MERGE"
    assert out.record["retired_patient"]["linkable"] is False
    assert out.record["retired_patient"]["pseudonym"] != out.record["patient"]["pseudonym"]
    retired_alone = FEEDS["hdh"].apply(
        "patient", sample("patient", patient=patient_ref(qualified=False, ins=False, ipp="0099776655"))
    )
    assert retired_alone and out.record["retired_patient"]["pseudonym"] == retired_alone.key


def test_inca_takes_oncology_kinds_and_only_lab_observations_and_lab_or_pathology_reports():
    inca = FEEDS["inca"]
    assert inca.apply("encounter", sample("encounter")) is None
    assert inca.apply("observation", device_observation()) is None  # vital signs
    assert inca.apply("observation", sample("observation")) is not None
    assert inca.apply("diagnostic_report", sample("diagnostic_report", category="PAT")) is not None
    assert inca.apply("diagnostic_report", sample("diagnostic_report", category="RAD")) is None
    condition = inca.apply("condition", sample("condition"))
    assert condition and condition.record["tumour"]["morphology"] == {"system": "CIM-O-3", "code": "8500/3"}
    assert "encounter" not in condition.record


def test_unknown_kind_is_an_error():
    with pytest.raises(TransformError, match="not a canonical kind"):
        FEEDS["hdh"].apply("medication", sample("patient"))


def test_feed_lists_its_topics():
    assert FEEDS["inca"].topics() == {kind: f"national.inca.{kind}.v1" for kind in POLICIES["inca"].kinds}
    assert "inca" in repr(FEEDS["inca"])


def test_apply_as_a_function_uses_the_current_key():
    out = apply(POLICIES["hdh"], KEYS, "patient", sample("patient"))
    assert out and out.key.startswith("TEST-ONLY-NOT-A-SECRET-hdh-k2:")


# ------------------------------------------------------------------ date shift and age band through a policy

SHIFT_POLICY = """
destination: shifted
version: 1
key: {name: hdh}
date_shift: {max_days: 60}
common:
  envelope.event_id: {method: pseudonymize, context: event}
  envelope.event_type: keep
  envelope.event_time: date_shift
  patient: {method: pseudonymize, context: patient}
types:
  patient:
    birth_date: {method: generalize, to: age_band, width: 5, as: age_band}
    death_date: date_shift
  procedure:
    code.code: keep
    status: keep
    performed_start: date_shift
    performed_end: date_shift
"""


def test_date_shift_keeps_intervals_within_a_patient():
    policy = parse_policy(SHIFT_POLICY, "shift.yaml")
    proc = apply(policy, KEYS, "procedure", sample("procedure"))
    pat = apply(policy, KEYS, "patient", sample("patient"))
    assert proc and pat
    original = sample("procedure")
    offset = proc.record["performed_start"] - original["performed_start"]
    assert offset != timedelta(0) and offset.days != 0 and abs(offset.days) <= 61
    assert (
        proc.record["performed_end"] - proc.record["performed_start"]
        == original["performed_end"] - original["performed_start"]
    )
    assert proc.record["envelope"]["event_time"] - original["envelope"]["event_time"] == offset
    shifted_death = datetime.fromisoformat(pat.record["death_date"]).date()
    assert (shifted_death - datetime(2025, 11, 29).date()).days == round(offset / timedelta(days=1))
    assert pat.record["age_band"] == "40-44"
    offsets = set()
    for ipp in ("0000000001", "0000000002", "0000000003", "0000000004"):
        other = apply(
            policy,
            KEYS,
            "procedure",
            sample("procedure", patient=patient_ref(ins=False, qualified=False, ipp=ipp)),
        )
        assert other
        offsets.add(other.record["performed_start"] - original["performed_start"])
    assert len(offsets | {offset}) > 1  # offsets are per patient, not one global shift


# ------------------------------------------------------------------ national schemas


def _strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [_strip_docs(v) for v in node]
    return node


@pytest.mark.parametrize(("dest", "kind"), [(d, k) for d, p in POLICIES.items() for k in p.kinds])
def test_shipped_national_schema_is_exactly_what_the_policy_emits(dest, kind):
    shipped = json.loads((AVRO_DIR / "national" / dest / f"{kind}_v1.avsc").read_text(encoding="utf-8"))
    assert shipped["namespace"] == f"fr.affluent.national.{dest}"
    assert _strip_docs(shipped) == _strip_docs(derive_schema(POLICIES[dest], kind))


def test_national_schema_files_match_the_policies_and_the_catalog():
    files = {
        p.relative_to(AVRO_DIR).with_suffix("").as_posix() for p in (AVRO_DIR / "national").rglob("*.avsc")
    }
    expected = {POLICIES[d].schema_name_for(k) for d in POLICIES for k in POLICIES[d].kinds}
    assert files == expected
    national = {e.topic: e for e in cat.catalog() if e.topic.startswith("national.")}
    assert {t: e.schema_name for t, e in national.items()} == {
        POLICIES[d].topic_for(k): POLICIES[d].schema_name_for(k) for d in POLICIES for k in POLICIES[d].kinds
    }
    assert all(
        e.compatibility == "FULL_TRANSITIVE" and e.subject == f"{e.topic}-value" for e in national.values()
    )
    assert set(cat.NATIONAL_TOPICS) == set(national)


IDENTIFIER_FIELD_NAMES = {
    "names",
    "family",
    "given",
    "telecom",
    "lines",
    "city",
    "ipp",
    "ins",
    "matricule",
    "visit_number",
    "key",
    "raw_id",
    "lineage",
    "merged_into",
    "value_string",
    "conclusion",
    "display",
    "text",
    "room",
    "bed",
    "marital_status",
}


def _field_names(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for field in node.get("fields", []):
            out.add(field["name"])
            _field_names(field["type"], out)
        for k in ("items", "type"):
            if isinstance(node.get(k), dict | list):
                _field_names(node[k], out)
    elif isinstance(node, list):
        for item in node:
            _field_names(item, out)
    return out


@pytest.mark.parametrize(
    "path", sorted((AVRO_DIR / "national").rglob("*.avsc")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_national_schemas_hold_no_identifier_field(path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    names = _field_names(schema, set())
    assert not names & IDENTIFIER_FIELD_NAMES
    record_names = json.dumps(schema)
    for banned in ('"PatientRef"', '"Ipp"', '"Ins"', '"EncounterRef"', '"HumanName"', '"ContactPoint"'):
        assert banned not in record_names


def test_inca_patient_schema_has_no_exact_birth_date():
    schema = json.loads((AVRO_DIR / "national" / "inca" / "patient_v1.avsc").read_text(encoding="utf-8"))
    assert [f["name"] for f in schema["fields"]] == ["envelope", "patient", "birth_date", "sex"]
    birth = next(f for f in schema["fields"] if f["name"] == "birth_date")
    assert "YYYY-MM" in birth["doc"] and birth["type"] == ["null", "string"]


# ------------------------------------------------------------------ encoder


def test_compiled_encoder_refuses_what_it_does_not_know_and_fastavro_takes_over():
    schema = {
        "type": "record",
        "name": "M",
        "fields": [{"name": "m", "type": ["string", "long"]}],  # a general union
    }
    with pytest.raises(NotCompilable):
        compile_writer(schema)
    encoder = NationalEncoder(json.dumps(schema))
    assert encoder.encode({"m": 5}) == _fastavro_bytes(parse_schema(json.dumps(schema)), {"m": 5})


def test_compiled_encoder_handles_defaults_negative_longs_and_long_strings():
    schema = {
        "type": "record",
        "name": "T",
        "fields": [
            {"name": "n", "type": "long"},
            {"name": "s", "type": "string"},
            {"name": "flag", "type": "boolean", "default": True},
            {"name": "items", "type": {"type": "array", "items": "int"}, "default": []},
            {"name": "x", "type": ["string", "null"], "default": "d"},
            {"name": "f", "type": "float"},
            {"name": "b", "type": "bytes"},
            {
                "name": "when",
                "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
                "default": None,
            },
        ],
    }
    parsed = parse_schema(json.dumps(schema))
    encode = compile_writer(schema)
    for record in (
        {
            "n": -1,
            "s": "é" * 100,
            "f": 1.5,
            "b": b"\x00\xff",
            "when": datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
        },
        {
            "n": 2**62,
            "s": "",
            "flag": False,
            "items": [1, -64, 64, 300],
            "x": None,
            "f": -0.0,
            "b": b"",
            "when": 1,
        },
    ):
        assert encode(record) == _fastavro_bytes(parsed, record)


def test_an_unfit_record_gives_a_content_free_schema_error():
    feed = FEEDS["hdh"]
    national = feed.apply("observation", sample("observation"))
    assert national
    broken = copy.deepcopy(national.record)
    broken["status"] = ["DUCANARÏ"]
    with pytest.raises(SchemaError) as info:
        feed._encoders["observation"].encode(broken)
    assert "DUCANARÏ" not in str(info.value) and "Observation" in str(info.value)


def test_shipped_policy_files_are_packaged_next_to_the_code():
    for name in POLICIES:
        path = shipped_policy_path(name)
        assert path.is_file() and yaml.safe_load(path.read_text(encoding="utf-8"))["destination"] == name


def test_a_feed_refuses_a_shipped_schema_that_is_not_what_the_policy_emits():
    text = shipped_policy_path("inca").read_text(encoding="utf-8")
    edited = parse_policy(
        text.replace("    sex: keep\n", "    sex: keep\n    deceased: keep\n", 1), "inca.yaml"
    )
    with pytest.raises(ConfigError, match=r"national/inca/patient_v1\.avsc is not what the policy emits"):
        Feed(edited, KEYS)


def test_a_draft_policy_without_shipped_schemas_uses_the_schema_it_implies():
    feed = Feed(parse_policy(SHIFT_POLICY, "shift.yaml"), KEYS)
    national = feed.apply("procedure", sample("procedure"))
    assert (
        national and json.loads(feed.schema_text("procedure"))["namespace"] == "fr.affluent.national.shifted"
    )
    assert fastavro.schemaless_reader(
        io.BytesIO(feed.encode(national)), parse_schema(feed.schema_text("procedure"))
    )


_GEN_SCHEMA = {
    "type": "record",
    "name": "G",
    "namespace": "t",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "n", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "d", "type": "double"},
        {"name": "flag", "type": ["null", "boolean"], "default": None},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {
            "name": "sub",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Sub",
                    "fields": [{"name": "x", "type": ["null", "string"], "default": None}],
                },
            ],
            "default": None,
        },
        {"name": "subs", "type": {"type": "array", "items": "Sub"}, "default": []},
        {"name": "again", "type": ["null", "E"], "default": None},
        {"name": "strings", "type": {"type": "array", "items": "string"}, "default": []},
    ],
}
_GEN_PARSED = parse_schema(json.dumps(_GEN_SCHEMA))
_GEN_ENCODE = compile_writer(_GEN_SCHEMA)
_sub = st.one_of(st.none(), st.fixed_dictionaries({"x": st.one_of(st.none(), st.text())}))
_records = st.fixed_dictionaries(
    {
        "s": st.text(),
        "n": st.integers(-(2**63), 2**63 - 1),
        "i": st.integers(-(2**31), 2**31 - 1),
        "d": st.floats(allow_nan=False),
        "flag": st.one_of(st.none(), st.booleans()),
        "e": st.sampled_from(["A", "B", "C"]),
        "ts": st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
        ),
        "sub": _sub,
        "subs": st.lists(st.fixed_dictionaries({"x": st.one_of(st.none(), st.text())}), max_size=70),
        "again": st.one_of(st.none(), st.sampled_from(["A", "B", "C"])),
        "strings": st.lists(st.text(max_size=80), max_size=5),
    }
)


@settings(max_examples=200, deadline=None)
@given(_records)
def test_compiled_encoder_writes_fastavro_bytes_for_generated_records(record):
    assert _GEN_ENCODE(record) == _fastavro_bytes(_GEN_PARSED, record)


@pytest.mark.parametrize(
    ("field", "value"),
    [("flag", "yes"), ("strings", "abc"), ("ts", "2026-03-14"), ("s", b"bytes"), ("n", 1.5)],
)
def test_compiled_encoder_is_never_lenient(field, value):
    record = {"s": "a", "n": 1, "i": 1, "d": 1.0, "e": "A", "ts": datetime(2026, 1, 1, tzinfo=UTC)} | {
        field: value
    }
    with pytest.raises((TypeError, AttributeError)):
        _GEN_ENCODE(record)
