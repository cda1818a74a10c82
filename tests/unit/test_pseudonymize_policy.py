"""Policies: the shipped ones load, and every way a policy can be wrong is caught at load with a precise
message naming file, kind, path and problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.pseudonymize.policy import (
    PolicyError,
    derive_schema,
    describe_policy,
    load_policy,
    parse_policy,
    shipped_policy_path,
)

BASE: dict[str, Any] = {
    "destination": "test",
    "version": 1,
    "key": {"name": "hdh"},
    "common": {
        "envelope.event_id": {"method": "pseudonymize", "context": "event"},
        "envelope.event_type": "keep",
        "patient": {"method": "pseudonymize", "context": "patient"},
    },
    "types": {"observation": {"status": "keep"}},
}


def _policy(fields: dict[str, Any] | None = None, kind: str = "observation", **top: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    if fields is not None:
        data["types"] = {kind: {"status": "keep"} | fields if kind == "observation" else fields}
    for name, value in top.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def _load(data: dict[str, Any]):
    return parse_policy(yaml.safe_dump(data, allow_unicode=True), "test.yaml")


def _error(data: dict[str, Any]) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        _load(data)
    return info.value


# ------------------------------------------------------------------ shipped policies


def test_shipped_policies_load():
    hdh = load_policy("hdh")
    inca = load_policy("inca")
    assert hdh.destination == "hdh" and hdh.key_name == "hdh" and hdh.version == 1
    assert set(hdh.kinds) == {
        "patient",
        "encounter",
        "observation",
        "condition",
        "procedure",
        "diagnostic_report",
        "retraction",
    }
    assert set(inca.kinds) == {
        "patient",
        "condition",
        "procedure",
        "observation",
        "diagnostic_report",
        "retraction",
    }
    assert not inca.sends("encounter")
    assert inca.topic_for("condition") == "national.inca.condition.v1"
    assert inca.schema_name_for("condition") == "national/inca/condition_v1"


def test_load_policy_accepts_a_path():
    assert load_policy(shipped_policy_path("hdh")).destination == "hdh"


def test_inca_receives_sex_and_month_of_birth_only():
    rows = {
        path: what for path, what in describe_policy(load_policy("inca"), "patient") if what != "not sent"
    }
    assert set(rows) == {
        "envelope.event_id",
        "envelope.event_type",
        "envelope.source.facility",
        "envelope.source.protocol",
        "envelope.event_time",
        "envelope.event_time_precision",
        "patient",
        "sex",
        "birth_date",
    }
    assert rows["birth_date"] == "year and month only, YYYY-MM"


def test_hdh_generalizes_birth_residence_and_birthplace():
    rows = {path: what for path, what in describe_policy(load_policy("hdh"), "patient") if what != "not sent"}
    assert rows["birth_date"].startswith("year and month")
    assert rows["addresses[].postal_code"].startswith("département")
    assert rows["birth_place_code"].startswith("département")
    assert "names" not in rows and "telecom" not in rows


def test_keep_of_a_record_keeps_its_fields_except_free_text():
    schema = derive_schema(load_policy("hdh"), "observation")
    code = next(f for f in schema["fields"] if f["name"] == "code")
    assert [f["name"] for f in code["type"]["fields"]] == ["system", "code", "local"]  # no display
    rr = next(f for f in schema["fields"] if f["name"] == "reference_range")
    assert [f["name"] for f in rr["type"][1]["fields"]] == ["low", "high"]  # no text


def test_a_minimal_policy_loads():
    policy = _load(_policy())
    assert policy.kinds == ("observation",)
    assert policy.timezone.key == "Europe/Paris"


# ------------------------------------------------------------------ the errors


def _assert_error(err: PolicyError, kind: str, path: str, problem: str) -> None:
    assert err.file == "test.yaml"
    assert err.kind == kind
    assert err.path == path
    assert problem in err.problem, err.problem
    assert str(err).startswith(
        f"policy test.yaml: {kind}: {path}: " if path else f"policy test.yaml: {kind}: "
    )


def test_unknown_field_names_the_record_and_lists_the_fields():
    err = _error(_policy({"value_quantity.valeur": "keep"}))
    _assert_error(
        err, "observation", "value_quantity.valeur", "unknown field 'valeur' in 'value_quantity' (Quantity)"
    )
    assert "fields: value, comparator, unit" in err.problem


def test_unknown_top_level_field():
    err = _error(_policy({"colour": "keep"}))
    _assert_error(err, "observation", "colour", "unknown field 'colour' in canonical Observation")


def test_unknown_method():
    err = _error(_policy({"value_quantity": "hash"}))
    _assert_error(
        err,
        "observation",
        "value_quantity",
        "unknown method 'hash'; known: keep, drop, pseudonymize, generalize, date_shift",
    )


def test_missing_parameter():
    err = _error(_policy({"device.id": {"method": "pseudonymize"}}))
    _assert_error(err, "observation", "device.id", "method pseudonymize needs parameter 'context'")


def test_missing_parameter_on_a_kind_field():
    data = _policy({"birth_date": {"method": "generalize", "to": "age_band"}}, kind="patient")
    err = _error(data)
    _assert_error(err, "patient", "birth_date", "generalize to age_band needs parameter 'width'")


@pytest.mark.parametrize("key", [None, {}, {"name": ""}, "hdh", {"ring": "hdh"}])
def test_missing_key_configuration(key):
    data = _policy()
    if key is None:
        data.pop("key")
    else:
        data["key"] = key
    err = _error(data)
    assert "missing key configuration" in err.problem
    assert str(err).startswith("policy test.yaml: missing key configuration")


def test_unknown_entry_in_key_configuration():
    err = _error(_policy(key={"name": "hdh", "secret": "x"}))
    assert "key: unknown entry 'secret'" in err.problem


def test_unknown_kind():
    data = _policy()
    data["types"] = {"medication": {"status": "keep"}}
    err = _error(data)
    assert err.kind == "medication" and "unknown canonical kind" in err.problem


def test_paths_into_lists_need_brackets_and_only_lists_take_them():
    err = _error(_policy({"components.code.code": "keep"}))
    _assert_error(
        err,
        "observation",
        "components.code.code",
        "'components' is a list: write components[] to name a field of its items",
    )
    err = _error(_policy({"code[].code": "keep"}))
    _assert_error(err, "observation", "code[].code", "'code' is not a list; remove the []")
    assert _load(_policy({"components[].value_quantity.value": "keep"})).sends("observation")


def test_paths_into_a_leaf_or_with_bad_syntax():
    err = _error(_policy({"status.code": "keep"}))
    assert err.path == "status.code" and "'status' has no fields to name" in err.problem
    err = _error(_policy({"Code..code": "keep"}))
    assert "a path is field names joined by '.'" in err.problem


@pytest.mark.parametrize(
    ("fields", "kind", "path", "problem"),
    [
        ({"value_string": "keep"}, "observation", "value_string", "free text"),
        ({"components[].value_string": "keep"}, "observation", "components[].value_string", "free text"),
        ({"code.display": "keep"}, "observation", "code.display", "free text"),
        ({"reference_range.text": "keep"}, "observation", "reference_range.text", "free text"),
        (
            {"conclusion": {"method": "pseudonymize", "context": "record"}},
            "diagnostic_report",
            "conclusion",
            "free text",
        ),
        (
            {"names[].family": "keep"},
            "patient",
            "names[].family",
            "a direct identifier; it can only be dropped",
        ),
        (
            {"names[].family": {"method": "pseudonymize", "context": "record"}},
            "patient",
            "names[].family",
            "only be dropped",
        ),
        ({"telecom[].value": "keep"}, "patient", "telecom[].value", "only be dropped"),
        ({"addresses[].lines": "keep"}, "patient", "addresses[].lines", "only be dropped"),
        ({"addresses[].city": "keep"}, "patient", "addresses[].city", "only be dropped"),
        (
            {"merged_into": {"method": "pseudonymize", "context": "record"}},
            "patient",
            "merged_into",
            "only be dropped",
        ),
        ({"birth_date": "keep"}, "patient", "birth_date", "identifying as it is"),
        ({"addresses[].postal_code": "keep"}, "patient", "addresses[].postal_code", "identifying as it is"),
        ({"device.id": "keep"}, "observation", "device.id", "identifying as it is"),
        ({"result_event_ids": "keep"}, "diagnostic_report", "result_event_ids", "identifying as it is"),
        ({"names": "keep"}, "patient", "names", "keeping 'names' whole would send 'names.use'"),
        ({"device": "keep"}, "observation", "device", "keeping 'device' whole would send 'device.id'"),
        ({"encounter": "keep"}, "observation", "encounter", "(EncounterRef) is identifying"),
        (
            {"encounter.visit_number": {"method": "pseudonymize", "context": "record"}},
            "observation",
            "encounter.visit_number",
            "the parts of 'encounter' (EncounterRef) are identifiers",
        ),
        (
            {"retired_patient.ins.matricule": "keep"},
            "retraction",
            "retired_patient.ins.matricule",
            "the parts of 'retired_patient' (PatientRef)",
        ),
    ],
)
def test_identifiers_and_free_text_cannot_be_sent(fields, kind, path, problem):
    err = _error(_policy(fields, kind=kind))
    _assert_error(err, kind, path, problem)


def test_the_patient_block_cannot_be_opened_even_in_common():
    data = _policy()
    data["common"]["patient.ins.matricule"] = "keep"
    data["common"].pop("patient")
    err = _error(data)
    assert err.kind == "observation (common)" and err.path == "patient.ins.matricule"
    assert "pseudonymize patient as a whole" in err.problem


@pytest.mark.parametrize(
    ("fields", "path", "problem"),
    [
        (
            {"status": "keep", "deceased": {"method": "generalize", "to": "year"}},
            "deceased",
            "applies to timestamps and date fields only",
        ),
        (
            {"sex": {"method": "pseudonymize", "context": "patient"}},
            "sex",
            "applies to a patient block (PatientRef) only",
        ),
        ({"birth_place_code": "date_shift"}, "birth_place_code", "date_shift applies to timestamps"),
    ],
)
def test_methods_must_fit_the_field_type(fields, path, problem):
    err = _error(_policy(fields, kind="patient"))
    _assert_error(err, "patient", path, problem)


def test_overlapping_paths_are_refused():
    err = _error(_policy({"code": "keep", "code.system": "keep"}))
    _assert_error(err, "observation", "code.system", "overlaps 'code', which already has a method")
    err = _error(_policy({"code.system": "keep", "code": "drop"}))  # a drop contradicting a keep below it
    assert err.path in ("code", "code.system") and "overlaps 'code" in err.problem


def test_a_path_given_twice_in_yaml_is_refused_with_its_line():
    text = yaml.safe_dump(_policy()) + "  # appended\n"
    text = text.replace("    status: keep\n", "    status: keep\n    status: drop\n")
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "test.yaml")
    assert "'status' is given twice" in info.value.problem and "line" in info.value.problem


def test_a_path_in_common_and_in_a_kind_is_refused():
    err = _error(_policy({"patient": {"method": "pseudonymize", "context": "patient"}}))
    _assert_error(err, "observation", "patient", "also given in common")


@pytest.mark.parametrize(
    ("drop", "path", "problem"),
    [
        (
            "envelope.event_id",
            "envelope.event_id",
            "required: 'envelope.event_id: {method: pseudonymize, context: event}'",
        ),
        ("envelope.event_type", "envelope.event_type", "required: 'envelope.event_type: keep'"),
        ("patient", "patient", "required: 'patient: {method: pseudonymize, context: patient}'"),
    ],
)
def test_required_entries(drop, path, problem):
    data = _policy()
    data["common"].pop(drop)
    err = _error(data)
    _assert_error(err, "observation", path, problem)


def test_schema_version_belongs_to_the_transform():
    err = _error(_policy({"envelope.schema_version": "keep"}))
    _assert_error(err, "observation", "envelope.schema_version", "set by the transform")


def test_a_record_whose_every_field_is_dropped_is_refused():
    err = _error(_policy({"value_quantity.value": "drop"}))
    _assert_error(err, "observation", "value_quantity", "every field below is dropped")


def test_date_shift_needs_its_range():
    err = _error(_policy({"effective_time": "date_shift"}))
    assert err.kind == "observation" and "no 'date_shift: {max_days: N}'" in err.problem
    assert _load(_policy({"effective_time": "date_shift"}, date_shift={"max_days": 90})).max_shift_days == 90
    err = _error(_policy(date_shift={"max_days": 0}))
    assert "max_days must be" in err.problem


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ({"destination": "HDH"}, "destination must be a lowercase name"),
        ({"destination": None}, "destination must be a lowercase name"),
        ({"version": 0}, "version must be a whole number"),
        ({"version": "1"}, "version must be a whole number"),
        ({"timezone": "Europe/Besançon"}, "unknown timezone"),
        ({"types": {}}, "types must map each canonical kind"),
        ({"common": ["patient"]}, "common must map field paths"),
        ({"colour": "blue"}, "unknown top-level entry 'colour'"),
    ],
)
def test_top_level_errors(top, problem):
    data = _policy()
    for name, value in top.items():
        if value is None:
            data.pop(name)
        else:
            data[name] = value
    assert problem in _error(data).problem


def test_invalid_yaml_gives_the_line_not_the_text():
    with pytest.raises(PolicyError) as info:
        parse_policy("destination: hdh\ntypes: {observation: [\n", "broken.yaml")
    assert info.value.file == "broken.yaml" and "not valid YAML at line" in info.value.problem


def test_a_missing_file():
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy("/nonexistent/policy.yaml")


def test_select_is_checked():
    ok = _load(_policy(select={"observation": {"category": ["laboratory"]}}))
    assert ok.selects("observation", {"category": "laboratory"})
    assert not ok.selects("observation", {"category": "vital-signs"})
    for select, problem in [
        ({"patient": {"sex": ["female"]}}, "select names a kind that types does not send"),
        ({"observation": {"value_quantity": ["x"]}}, "top-level code fields"),
        ({"observation": {"value_string": ["x"]}}, "free text cannot select"),
        ({"observation": {"category": []}}, "non-empty list"),
        ({"observation": ["category"]}, "must map fields"),
    ]:
        assert problem in _error(_policy(select=select)).problem


def test_generalize_with_as_renames_the_output_field():
    data = _policy(
        {"birth_date": {"method": "generalize", "to": "age_band", "width": 10, "as": "age_band_at_event"}},
        kind="patient",
    )
    policy = _load(data)
    names = [f["name"] for f in derive_schema(policy, "patient")["fields"]]
    assert "age_band_at_event" in names and "birth_date" not in names
    err = _error(_policy({"birth_date": {"method": "generalize", "to": "year", "as": "sex"}}, kind="patient"))
    assert "would hide the canonical field" in err.problem


def test_policy_errors_never_carry_patient_data_because_policies_hold_none():
    err = _error(_policy({"value_quantity.valeur": "keep"}))
    assert isinstance(err, Exception) and err.args == (str(err),)


def test_the_documentation_tables_cover_every_field_the_shipped_policies_name():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pseudonymization.md").read_text(encoding="utf-8")
    for name in ("hdh", "inca"):
        policy = load_policy(name)
        for kind in policy.kinds:
            assert f"`{policy.topic_for(kind)}`" in doc
            for path, _ in describe_policy(policy, kind):
                parts = path.split(".")
                prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
                assert any(f"`{p}`" in doc for p in prefixes), f"{name}/{kind}: {path} is not documented"
