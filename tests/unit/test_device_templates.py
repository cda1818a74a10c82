"""Mapping templates: the three vendor shapes read right, every load error is clear, bad payloads precise."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from formats.devices import expr
from formats.devices.expr import MISSING, ExpressionError
from formats.devices.templates import (
    TEMPLATES_DIR,
    PayloadError,
    TemplateError,
    compile_template,
    load_template,
    load_templates,
    read_payload,
)
from tests.support.devices import SHAPES, sample

TEMPLATES = load_templates()


def raw_template(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((TEMPLATES_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    return data


# --- expressions ---------------------------------------------------------------------------------------


def test_expressions_walk_keys_indexes_and_quoted_keys() -> None:
    doc = {"a": {"b-c": [1, {"x y": 5}]}, "n": [10, 20]}
    assert expr.parse("$.a.b-c[1]['x y']").get(doc) == 5
    assert expr.parse("$.n[-1]").get(doc) == 20
    assert expr.parse("@.v").get(doc, {"v": 3}) == 3
    assert expr.parse("$.a.missing").get(doc) is MISSING
    assert expr.parse("$.n[5]").get(doc) is MISSING
    assert expr.parse("$.n.x").get(doc) is MISSING
    assert [w for w, _ in expr.parse("$.n[*]").all(doc)] == ["$.n[0]", "$.n[1]"]


@pytest.mark.parametrize("text", ["", "a.b", "$.a b", "$..a", "$[x]", "$.a; import os", "__import__('os')"])
def test_anything_but_a_path_is_refused(text: str) -> None:
    with pytest.raises(ExpressionError):
        expr.parse(text)


# --- the shipped templates on their sample payloads ------------------------------------------------


def test_the_shipped_templates_cover_the_three_shapes() -> None:
    assert set(TEMPLATES) == set(SHAPES)


def test_single_object_blood_pressure_gives_three_measurements_in_utc() -> None:
    (reading,) = read_payload(TEMPLATES["bp-single"], sample("bp-single"))
    assert reading.device_id == "BPM-00A1B2C3" and reading.model == "TensioHome 3"
    assert reading.time.instant == datetime(2026, 11, 24, 7, 15, tzinfo=UTC)
    got = {m.spec.code.code: (m.quantity["value"], m.quantity["unit"]) for m in reading.measurements}
    assert got == {"8480-6": (128.0, "mm[Hg]"), "8462-4": (82.0, "mm[Hg]"), "8867-4": (71.0, "/min")}


def test_nested_readings_are_converted_to_kg_and_celsius_keeping_the_sent_unit() -> None:
    weight, temperature = read_payload(TEMPLATES["scale-nested"], sample("scale-nested"))
    assert weight.location == "$.readings[0]" and temperature.location == "$.readings[1]"
    assert weight.time.instant == datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
    (w,) = weight.measurements
    assert (w.spec.code.code, w.quantity["unit"], w.quantity["original_unit"]) == ("29463-7", "kg", "lb")
    assert w.quantity["value"] == pytest.approx(74.978819)
    (t,) = temperature.measurements
    assert (t.quantity["unit"], t.quantity["original_unit"]) == ("Cel", "°F")
    assert t.quantity["value"] == pytest.approx(37.166667)


def test_batch_list_reads_every_sensor_with_mdc_codes() -> None:
    readings = read_payload(TEMPLATES["gateway-batch"], sample("gateway-batch"))
    assert [r.device_id for r in readings] == ["0012A3FFFE4B5C6D", "0012A3FFFE4B5C6D", "0012A3FFFE4B5C6E"]
    assert [r.measurements[0].spec.code.code for r in readings] == ["150456", "149530", "147842"]
    assert {r.measurements[0].spec.code.system for r in readings} == {"urn:iso:std:iso:11073:10101"}
    assert readings[2].time.precision == "millisecond"
    assert readings[0].device_id_system == "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"


def test_a_top_level_array_is_several_documents() -> None:
    one = json.loads(sample("bp-single"))
    two = dict(one, measuredAt="2026-11-24T09:15:00+01:00")
    readings = read_payload(TEMPLATES["bp-single"], json.dumps([one, two]).encode())
    assert [r.location for r in readings] == ["$[0]", "$[1]"]


# --- bad payloads: a precise reason and location, never a value ---------------------------------------


def _bp(**changes: Any) -> bytes:
    doc = json.loads(sample("bp-single"))
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("payload", "code", "location"),
    [
        (_bp(systolic=None), "missing_value", "$:systolic"),
        (_bp(systolic="128"), "wrong_type", "$:systolic"),
        (_bp(systolic=True), "wrong_type", "$:systolic"),
        (_bp(systolic=912), "implausible_value", "$:systolic"),
        (_bp(measuredAt="24/11/2026 08:15"), "bad_timestamp", "$"),
        (_bp(measuredAt="2026-11-24"), "bad_timestamp", "$"),
        (_bp(measuredAt="2026-13-24T08:15:00Z"), "bad_timestamp", "$"),
        (_bp(measuredAt=None), "missing_timestamp", "$"),
        (_bp(deviceId=None), "missing_device", "$"),
        (b"{not json", "not_json", ""),
        (b"[" * 100_000 + b"]" * 100_000, "not_json", ""),
        (b"[]", "no_reading", "$"),
        (b"[1]", "wrong_type", "$[0]"),
        (
            b'{"deviceId": "X", "measuredAt": "2026-11-24T08:15:00Z", "systolic": NaN, "diastolic": 80}',
            "wrong_type",
            "$:systolic",
        ),
    ],
)
def test_bad_single_payloads(payload: bytes, code: str, location: str) -> None:
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["bp-single"], payload)
    assert (err.value.code, err.value.location) == (code, location)
    assert "912" not in str(err.value) and "24/11" not in str(err.value)


def test_bad_nested_readings_name_the_reading() -> None:
    doc = json.loads(sample("scale-nested"))
    doc["readings"][1]["unit"] = "furlongs"
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["scale-nested"], json.dumps(doc).encode())
    assert (err.value.code, err.value.location) == ("unknown_unit", "$.readings[1]:temperature")
    doc = json.loads(sample("scale-nested"))
    doc["readings"][0]["type"] = "glucose"
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["scale-nested"], json.dumps(doc).encode())
    assert (err.value.code, err.value.location) == ("no_observation", "$.readings[0]")
    doc = json.loads(sample("scale-nested"))
    doc["readings"][0]["ts"] = "yesterday"
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["scale-nested"], json.dumps(doc).encode())
    assert err.value.code == "bad_timestamp"
    doc["readings"] = []
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["scale-nested"], json.dumps(doc).encode())
    assert err.value.code == "no_reading"


def test_a_template_may_name_its_devices_own_unit_spellings() -> None:
    """The one-line fix of an ``unknown_unit`` dead letter: the vendor's spelling → a UCUM code."""
    doc = json.loads(sample("scale-nested"))
    doc["readings"][0]["unit"] = "Livres"
    with pytest.raises(PayloadError) as err:
        read_payload(TEMPLATES["scale-nested"], json.dumps(doc).encode())
    assert (err.value.code, err.value.location) == ("unknown_unit", "$.readings[0]:weight")
    fixed = compile_template({**raw_template("scale-nested"), "units": {"livres": "[lb_av]"}}, "scale.yaml")
    weight, _ = read_payload(fixed, json.dumps(doc).encode())
    reference, _ = read_payload(TEMPLATES["scale-nested"], sample("scale-nested"))
    assert weight.measurements[0].quantity["value"] == reference.measurements[0].quantity["value"]
    assert weight.measurements[0].quantity["unit"] == "kg"  # converted as the template asks
    assert weight.measurements[0].quantity["original_unit"] == "Livres"  # the sender's spelling kept


# --- load-time validation ------------------------------------------------------------------------------


def _broken(mutate: Any, name: str = "bp-single") -> dict[str, Any]:
    data = copy.deepcopy(raw_template(name))
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour="red"), "unknown key 'colour'"),
        (lambda d: d["observations"][0].update(scale=2), "observations[0]: unknown key 'scale'"),
        (
            lambda d: d["observations"][0].update(value="$.systolic + 1"),
            "observations[0].value: bad expression",
        ),
        (lambda d: d["observations"][0].update(unit="mmHgg"), "observations[0].unit: unknown unit"),
        (lambda d: d["observations"][0].update(convert_to="kg"), "no conversion from mm[Hg] to kg"),
        (lambda d: d["observations"][0]["code"].update(system="acme"), "unknown code system"),
        (lambda d: d["observations"][0].update(range=[300, 40]), "low is above high"),
        (lambda d: d["observations"][0].pop("unit"), "needs 'unit'"),
        (lambda d: d["observations"][1].update(name="systolic"), "names must be unique"),
        (lambda d: d.update(version="one"), "version: expected a positive integer"),
        (lambda d: d.pop("device"), "missing key 'device'"),
        (lambda d: d["time"].update(format="rfc822"), "time.format"),
        (lambda d: d["time"].update(timezone="Mars/Olympus"), "unknown time zone"),
        (lambda d: d["device"].update(id="$.devices[*].id"), "[*] is only allowed in 'readings'"),
        (lambda d: d.update(category="lab"), "category"),
        (lambda d: d.update(units={"livres": "furlong"}), "units.livres: unknown unit"),
        (lambda d: d.update(units=["lb"]), "units: expected a mapping"),
    ],
)
def test_template_errors_are_clear(mutate: Any, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        compile_template(_broken(mutate), "bp-single.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("bp-single.yaml")


def test_a_file_that_is_not_yaml_or_a_duplicate_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("template: [unclosed", encoding="utf-8")
    with pytest.raises(TemplateError, match="not valid YAML"):
        load_template(bad)
    bad.unlink()
    for copy_name in ("a.yaml", "b.yaml"):
        (tmp_path / copy_name).write_text((TEMPLATES_DIR / "bp-single.yaml").read_text(encoding="utf-8"))
    with pytest.raises(TemplateError, match="defined twice"):
        load_templates(tmp_path)
    with pytest.raises(TemplateError, match=r"no \*\.yaml"):
        load_templates(tmp_path / "empty")
