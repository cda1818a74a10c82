"""Cohort definitions (checked at load) and the evidence rule: which diagnoses include a patient where."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from formats.clinical.codes import CIM10, ICD10, ICDO3, SNOMED
from streams.cohort.definition import (
    COHORTS_DIR,
    CohortError,
    compile_cohort,
    load_cohorts,
    normal_code,
    scoped_destinations,
)
from streams.cohort.rules import evidence

DESTINATIONS = ("hdh", "inca")
COHORTS = load_cohorts(DESTINATIONS)
T = datetime(2026, 9, 1, tzinfo=UTC)


def condition(
    code: str | None = "C34.1",
    system: str | None = CIM10,
    status: str | None = "confirmed",
    topography: str | None = None,
    morphology: str | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    tumour = None
    if topography or morphology:
        tumour = {
            "topography": {"system": ICDO3, "code": topography, "display": None} if topography else None,
            "morphology": {"system": ICDO3, "code": morphology, "display": None} if morphology else None,
            "stage": None,
        }
    return {
        "envelope": {"event_id": "e1", "event_time": T},
        "code": {"system": system, "code": code, "display": None} if code else None,
        "additional_codings": extra or [],
        "verification_status": status,
        "onset_time": None,
        "recorded_time": T,
        "tumour": tumour,
    }


def included(record: dict[str, Any], kind: str = "condition") -> set[str]:
    return {e.cohort for e in evidence(kind, record, COHORTS.values())}


def test_the_shipped_cohorts_load_and_feed_inca_only() -> None:
    assert sorted(COHORTS) == [
        "inca-all-cancers",
        "inca-aml",
        "inca-brain",
        "inca-liver",
        "inca-lung",
        "inca-mesothelioma",
        "inca-oesophagus",
        "inca-ovary",
        "inca-pancreas",
        "inca-stomach",
    ]
    assert scoped_destinations(COHORTS) == {"inca"}  # hdh is unchanged
    for cohort in COHORTS.values():
        assert cohort.sources and cohort.lookback_days == 365 and cohort.description


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("C34.1", {"inca-all-cancers", "inca-lung"}),
        ("C341", {"inca-all-cancers", "inca-lung"}),
        ("c25.0", {"inca-all-cancers", "inca-pancreas"}),
        ("C92.0", {"inca-all-cancers", "inca-aml"}),
        ("C92.1", {"inca-all-cancers"}),  # chronic myeloid: a cancer, not the AML cohort
        ("C45.0", {"inca-all-cancers", "inca-mesothelioma"}),
        ("C97", {"inca-all-cancers"}),
        ("D05.1", {"inca-all-cancers"}),  # in situ
        ("D10.0", set()),  # benign
        ("C98", set()),  # outside C00-C97
        ("I10", set()),
        ("", set()),
    ],
)
def test_diagnosis_codes(code: str, expected: set[str]) -> None:
    assert included(condition(code or None)) == expected


def test_what_is_no_evidence() -> None:
    assert included(condition(status="refuted")) == set()
    assert included(condition(status="entered-in-error")) == set()
    assert included(condition(status=None)) == {"inca-all-cancers", "inca-lung"}  # DG1 carries none
    assert included(condition(system=SNOMED)) == set()  # a SNOMED code is not read as CIM-10
    assert included(condition(system=ICD10)) == {"inca-all-cancers", "inca-lung"}
    assert included(condition(system=None)) == {"inca-all-cancers", "inca-lung"}
    assert included(condition(), kind="observation") == set()  # labs never include anybody


def test_additional_codings_and_tumour_details() -> None:
    local = condition("LOCAL-42", system="urn:oid:1.2.3", extra=[{"system": CIM10, "code": "C16.9"}])
    assert included(local) == {"inca-all-cancers", "inca-stomach"}
    # topography and malignant morphology both needed for a site cohort
    assert included(condition(None, topography="C71.9", morphology="9440/3")) == {
        "inca-brain",
        "inca-all-cancers",
    }
    assert included(condition(None, topography="C71.9", morphology="9440/1")) == set()  # uncertain behaviour
    assert included(condition(None, morphology="9861/3")) == {"inca-aml", "inca-all-cancers"}
    assert included(condition(None, morphology="8140/2")) == {"inca-all-cancers"}  # in situ
    [first] = [e for e in evidence("condition", condition(), COHORTS.values()) if e.cohort == "inca-lung"]
    assert (first.event_id, first.kind, first.code, first.at) == ("e1", "diagnosis", "C34.1", T)


def test_codes_compare_in_one_form() -> None:
    assert normal_code(" c34.1 ") == "C341" == normal_code("C34 .1")


def good() -> dict[str, Any]:
    return {
        "cohort": "test-lung",
        "version": 1,
        "destinations": ["inca"],
        "include": {"cim10": ["C34", "C00-C14"]},
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"include": {"icd11": ["2C25"]}}, "unknown code system 'icd11'"),
        ({"include": {"cim10": []}}, "expected a non-empty list"),
        ({"include": {}}, "expected one or more of cim10"),
        ({"destinations": ["ameli"]}, "unknown destination 'ameli'"),
        ({"destinations": []}, "non-empty list of destinations"),
        ({"include": {"cim10": ["C97-C00"]}}, "low before high"),
        ({"include": {"cim10": ["C00-D09"]}}, "same letter"),
        ({"include": {"cim10": ["C0-C97"]}}, "two 3-character categories"),
        ({"include": {"cim10": ["34"]}}, "is not a CIM-10 code"),
        ({"include": {"icdo3_morphology": ["malignant"]}}, "is not a CIM-O-3 morphology"),
        ({"verification": ["refuted"]}, "can never include a patient"),
        ({"verification": ["maybe"]}, "unknown status 'maybe'"),
        ({"lookback_days": -1}, "lookback_days"),
        ({"exit": "sometimes"}, "expected 'never' or {after_death_days: N}"),
        ({"cohort": "Lung Cancer"}, "lower-case name"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_a_wrong_cohort_is_refused_with_its_place(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CohortError, match=message) as caught:
        compile_cohort({**good(), **change}, "test-lung.yaml", DESTINATIONS)
    assert str(caught.value).startswith("test-lung.yaml")
    assert "\n" not in str(caught.value)


def test_optional_keys() -> None:
    cohort = compile_cohort(
        {**good(), "exit": {"after_death_days": 90}, "lookback_days": 730, "verification": ["confirmed"]},
        "t.yaml",
        DESTINATIONS,
    )
    assert cohort.exit.after_death_days == 90 and cohort.exit.describe() == "90 days after death"
    assert cohort.lookback_days == 730 and cohort.verification == {"confirmed"}
    assert cohort.cim10 is not None and cohort.cim10.matches("C10.2") and not cohort.cim10.matches("C15")


def test_a_folder_is_checked_as_a_whole(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="no cohort file"):
        load_cohorts(DESTINATIONS, tmp_path)
    (tmp_path / "a.yaml").write_text((COHORTS_DIR / "inca-lung.yaml").read_text(encoding="utf-8"))
    (tmp_path / "b.yaml").write_text((COHORTS_DIR / "inca-lung.yaml").read_text(encoding="utf-8"))
    with pytest.raises(CohortError, match="defined twice"):
        load_cohorts(DESTINATIONS, tmp_path)
    (tmp_path / "b.yaml").write_text("cohort: [unclosed", encoding="utf-8")
    with pytest.raises(CohortError, match="not valid YAML"):
        load_cohorts(DESTINATIONS, tmp_path)
    with pytest.raises(CohortError, match="unknown destination 'inca'"):
        load_cohorts(("hdh",))
