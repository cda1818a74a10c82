"""k-anonymity of national patient records (streams/pseudonymize/risk.py)."""

from __future__ import annotations

import json

import pytest

from affluent.core.errors import ConfigError
from schemas.registry import load_schema
from streams.pseudonymize.risk import (
    DEFAULT_QUASI_IDENTIFIERS,
    assess,
    check_paths,
    schema_paths,
    value_at,
)


def patient(pseudonym: str, sex: str, birth: str, facility: str = "CHU-A", cps: tuple[str, ...] = ()) -> dict:
    return {
        "envelope": {"source": {"facility": facility}},
        "patient": {"pseudonym": pseudonym},
        "sex": sex,
        "birth_date": birth,
        "addresses": [{"postal_code": cp, "use": "home"} for cp in cps],
    }


QI = ("sex", "birth_date", "envelope.source.facility")


def test_classes_are_counted_per_patient_not_per_record() -> None:
    records = [patient(f"p{i}", "F", "1984-07") for i in range(5)]
    records += [patient("p0", "F", "1984-07")] * 20  # the same patient many times
    records += [patient("q1", "M", "1950-01"), patient("q2", "M", "1950-01")]
    report = assess(records, "inca", QI, k=5)
    assert (report.records, report.patients, report.classes) == (27, 7, 2)
    assert report.smallest_class == report.k_anonymity == 2
    assert (report.classes_below_k, report.patients_below_k, report.records_below_k) == (1, 2, 2)
    assert report.small_classes == ((("M", "1950-01", "CHU-A"), 2),)


def test_the_latest_record_of_a_patient_decides_their_class() -> None:
    records = [patient("p1", "F", "1984-07", cps=("39",)), patient("p1", "F", "1984-07", cps=("25",))]
    records += [patient(f"p{i}", "F", "1984-07", cps=("25",)) for i in range(2, 6)]
    report = assess(records, "hdh", ("sex", "birth_date", "addresses[].postal_code"), k=5)
    assert report.classes == 1 and report.patients_below_k == 0


def test_array_paths_ignore_order_and_missing_values() -> None:
    a = value_at(patient("x", "F", "1984", cps=("39", "25")), "addresses[].postal_code")
    b = value_at(patient("x", "F", "1984", cps=("25", "39")), "addresses[].postal_code")
    assert a == b == ("25", "39")
    assert value_at({"envelope": None}, "envelope.source.facility") is None


def test_the_report_prints_sizes_not_values_unless_asked() -> None:
    report = assess([patient("p1", "F", "1984-07")], "inca", QI, k=5)
    assert not any("1984-07" in line for line in report.lines())
    assert any("1984-07" in line for line in report.lines(show_classes=True))


@pytest.mark.parametrize("destination", ["inca", "hdh"])
def test_default_quasi_identifiers_are_fields_the_destination_receives(destination: str) -> None:
    schema = json.loads(load_schema(f"national/{destination}/patient_v1"))
    check_paths(schema_paths(schema), DEFAULT_QUASI_IDENTIFIERS[destination])


def test_an_unknown_quasi_identifier_is_refused() -> None:
    schema = json.loads(load_schema("national/inca/patient_v1"))
    with pytest.raises(ConfigError, match="postal_code"):
        check_paths(schema_paths(schema), ["sex", "addresses[].postal_code"])
    with pytest.raises(ConfigError):
        assess([], "inca", QI, k=1)
