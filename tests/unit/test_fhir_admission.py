"""Issue #18: what the FHIR door answers 2xx for, the normalizer maps — one case per rule of the mapper.

Each case is refused by the door (status, FHIRPath location, issue type from the ReasonCode) and by the
mapper, given what the door would have stored, with the same ReasonCode and location: both ask
``formats/fhir/admission.py``. Before that module, the door answered 2xx to every one of them.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.fhir_rest import intake
from connectors.fhir_rest.intake import Refusal
from formats.clinical.identity import ins_key
from formats.clinical.times import parse_fhir_datetime
from formats.fhir.admission import SENDER, _plainly_readable, check_mappable, check_time, lone_scope
from formats.fhir.common import operation_outcome
from formats.reasons import ReasonCode, Refused
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.options import MappingOptions
from streams.normalize.result import Mapped, Rejection, run_mapper

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "fhir"
CTX = RawContext("r" * 64, "fhir", "fhir_rest", "CHU-TEST", "EDS", "m1", datetime(2026, 11, 1, tzinfo=UTC))
CANARY = "Zoé-CANARY-4711"
INS_TEST = "urn:oid:1.2.250.1.213.1.4.10"
BAD_INS = "2850325056123" + f"{(ins_key('2850325056123') + 1) % 97:02d}"
R = ReasonCode


def golden(name: str, **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text("utf-8"))
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def obs(**changes: Any) -> dict[str, Any]:
    return golden("observation_lab_loinc_ucum", **changes)


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def body(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def components_without_code(index: int) -> dict[str, Any]:
    resource = golden("observation_vitals_blood_pressure")
    resource["component"][index]["code"] = {"text": CANARY}
    return resource


def patient_without_identifier() -> dict[str, Any]:
    return golden("patient_ipp_only", identifier=[{"value": CANARY, "use": "old"}])


# (name, what is posted, status, location, reason) — a lone resource, or a transaction/collection stored whole.
WHOLE: list[tuple[str, dict[str, Any], int, str, ReasonCode]] = [
    ("Observation.status", obs(status=CANARY), 400, "Observation.status", R.INVALID_RESOURCE),
    (
        "Encounter.status",
        golden("encounter_inpatient", status=CANARY),
        400,
        "Encounter.status",
        R.INVALID_RESOURCE,
    ),
    (
        "Procedure.status",
        golden("procedure_ccam", status=CANARY),
        400,
        "Procedure.status",
        R.INVALID_RESOURCE,
    ),
    (
        "DiagnosticReport.status",
        golden("diagnostic_report_lab", status=CANARY),
        400,
        "DiagnosticReport.status",
        R.INVALID_RESOURCE,
    ),
    ("Patient.gender", golden("patient_ipp_only", gender=CANARY), 400, "Patient.gender", R.INVALID_RESOURCE),
    ("Observation.code", obs(code={"text": CANARY}), 422, "Observation.code", R.NO_CODE),
    (
        "Observation.component.code",
        components_without_code(1),
        422,
        "Observation.component[1].code",
        R.NO_CODE,
    ),
    (
        "Condition.code",
        golden("condition_cim10_breast_cancer", code={"coding": [{"display": CANARY}]}),
        422,
        "Condition.code",
        R.NO_CODE,
    ),
    ("Procedure.code", golden("procedure_ccam", code={"text": CANARY}), 422, "Procedure.code", R.NO_CODE),
    (
        "DiagnosticReport.code",
        golden("diagnostic_report_lab", code={"coding": [{"display": CANARY}], "text": CANARY}),
        422,
        "DiagnosticReport.code",
        R.NO_CODE,
    ),
    (
        "value[x] without a canonical slot",
        obs(valueQuantity=None, valueRange={"low": {"value": 1}, "high": {"value": 2}}),
        422,
        "Observation.valueRange",
        R.UNSUPPORTED_VALUE,
    ),
    (
        "a decimal no double holds",
        obs(valueQuantity={"value": 10**400, "unit": "mmol/L"}),
        400,
        "Observation.valueQuantity.value",
        R.INVALID_RESOURCE,
    ),
    (
        "a reference-range bound no double holds",
        obs(referenceRange=[{"low": {"value": 10**400}}]),
        400,
        "Observation.referenceRange[0].low.value",
        R.INVALID_RESOURCE,
    ),
    (
        "a leap second",
        obs(effectiveDateTime="2026-03-15T08:30:60Z"),
        400,
        "Observation.effectiveDateTime",
        R.BAD_TIME,
    ),
    (
        "a birth date no zone can read",  # year 2 at midnight: before the earliest instant east of UTC
        golden("patient_ipp_only", birthDate="0002-01-01"),
        400,
        "Patient.birthDate",
        R.BAD_TIME,
    ),
    (
        "a period end out of range",
        golden(
            "encounter_inpatient", period={"start": "2026-03-01T08:00:00Z", "end": "9999-12-31T23:00:00Z"}
        ),
        400,
        "Encounter.period.end",
        R.BAD_TIME,
    ),
    ("no subject", obs(subject=None), 422, "Observation.subject", R.NO_PATIENT),
    (
        "a subject that is a Group",
        golden("condition_cim10_breast_cancer", subject={"reference": "Group/g1", "display": CANARY}),
        422,
        "Condition.subject",
        R.NO_PATIENT,
    ),
    (
        "a subject declared another type",
        golden("procedure_ccam", subject={"reference": "Patient/p1", "type": "Device"}),
        422,
        "Procedure.subject",
        R.NO_PATIENT,
    ),
    (
        "a urn:uuid subject outside any Bundle",
        golden(
            "diagnostic_report_lab", subject={"reference": "urn:uuid:0b7bcb52-7e58-4a4d-a6f0-7f3a00000000"}
        ),
        422,
        "DiagnosticReport.subject",
        R.NO_PATIENT,
    ),
    (
        "a #contained subject that is not there",
        golden("encounter_inpatient", subject={"reference": "#p1", "display": CANARY}),
        422,
        "Encounter.subject",
        R.NO_PATIENT,
    ),
    (
        "a contained Patient without identifier",
        obs(
            subject={"reference": "#p"},
            contained=[{"resourceType": "Patient", "id": "p", "name": [{"family": CANARY}]}],
        ),
        422,
        "Patient.identifier",
        R.NO_PATIENT,
    ),
    (
        "a subject identifier that is a bad INS, no reference",
        obs(subject={"identifier": {"system": INS_TEST, "value": BAD_INS}}),
        422,
        "Observation.subject.identifier",
        R.BAD_INS_KEY,
    ),
    (
        "a Patient without usable identifier",
        patient_without_identifier(),
        422,
        "Patient.identifier",
        R.NO_PATIENT,
    ),
    (
        "a Patient with an INS only",
        golden("patient_ipp_only", identifier=[{"system": INS_TEST, "value": "291077511430288"}]),
        422,
        "Patient.identifier",
        R.NO_PATIENT,
    ),
    (
        "a Patient with a bad INS only",
        golden("patient_ipp_only", identifier=[{"system": INS_TEST, "value": BAD_INS}]),
        422,
        "Patient.identifier",
        R.BAD_INS_KEY,
    ),
    (
        "a merge into nobody",
        golden("patient_ipp_only", link=[{"type": "replaced-by", "other": {"display": CANARY}}]),
        422,
        "Patient.link[0].other",
        R.NO_PATIENT,
    ),
    (
        "an Encounter without identity",
        golden("encounter_inpatient", id=None, identifier=None, meta=None),
        422,
        "Encounter.identifier",
        R.NO_VISIT,
    ),
    (
        "a transaction subject resolving to a Practitioner",
        bundle(
            "transaction",
            post(
                {"resourceType": "Organization", "name": CANARY},
                "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000001",
            ),
            post(obs(id=None, subject={"reference": "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000001"})),
        ),
        422,
        "Observation.subject",
        R.NO_PATIENT,
    ),
    (
        "a transaction subject resolving to a Patient without identifier",
        bundle(
            "collection",
            {
                "fullUrl": "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000002",
                "resource": obs(
                    id=None, subject={"reference": "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000003"}
                ),
            },
            {
                "fullUrl": "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000003",
                "resource": patient_without_identifier(),
            },
        ),
        422,
        "Patient.identifier",
        R.NO_PATIENT,
    ),
    (
        "an entry resource that is JSON null",
        bundle(
            "transaction",
            post(obs()),
            {"resource": None, "request": {"method": "DELETE", "url": "Observation/x"}},
        ),
        400,
        "Bundle.entry[1].resource",
        R.INVALID_RESOURCE,
    ),
    (
        "a conditional DELETE in a transaction",
        bundle(
            "transaction", post(obs()), {"request": {"method": "DELETE", "url": f"Observation?code={CANARY}"}}
        ),
        422,
        "Bundle.entry[1].request.url",
        R.UNSUPPORTED_REQUEST,
    ),
    (
        "a DELETE url that is no <Type>/<id> in a collection",
        bundle("collection", {"resource": obs()}, {"request": {"method": "DELETE", "url": CANARY}}),
        422,
        "Bundle.entry[1].request.url",
        R.UNSUPPORTED_REQUEST,
    ),
    (
        "a transaction of unmapped types only",
        bundle("transaction", post({"resourceType": "Practitioner", "name": [{"family": CANARY}]})),
        404,
        "Bundle.entry",
        R.UNSUPPORTED_RESOURCE,
    ),
]


def _door(doc: dict[str, Any]) -> Refusal:
    with pytest.raises(Refusal) as caught:
        if doc["resourceType"] == "Bundle":
            intake.bundle_plan(body(doc))
        else:
            intake.resource_item(body(doc), doc["resourceType"])
    return caught.value


def _mapper(payload: bytes) -> Rejection:
    outcome = run_mapper(map_fhir, payload, CTX, MappingOptions())
    assert isinstance(outcome, Rejection), "the mapper mapped it"
    return outcome


def _content_free(refusal: Refusal, rejection: Rejection) -> None:
    text = json.dumps(operation_outcome(refusal.issues), ensure_ascii=False) + rejection.reason
    assert CANARY not in text and BAD_INS not in text


@pytest.mark.parametrize(("name", "doc", "status", "location", "code"), WHOLE, ids=[c[0] for c in WHOLE])
def test_the_door_refuses_what_the_mapper_refuses(name, doc, status, location, code):
    refusal = _door(doc)
    rejection = _mapper(body(doc))
    assert (rejection.reason_code, rejection.location) == (code, location), rejection
    assert refusal.status == status == code.http_status
    [issue] = refusal.issues
    assert (issue.expression, issue.code) == (location, code.fhir_issue), issue
    assert issue.diagnostics.endswith(rejection.reason)  # the dead letter's words (a Bundle names the entry)
    _content_free(refusal, rejection)


def test_every_rule_of_the_mapper_has_its_case():
    codes = {c[4] for c in WHOLE}
    assert codes == {
        R.INVALID_RESOURCE,
        R.NO_CODE,
        R.UNSUPPORTED_VALUE,
        R.BAD_TIME,
        R.NO_PATIENT,
        R.BAD_INS_KEY,
        R.NO_VISIT,
        R.UNSUPPORTED_REQUEST,
        R.UNSUPPORTED_RESOURCE,
    }


def test_a_bundle_entry_refusal_names_the_entry_at_the_door_only():
    doc = bundle("transaction", post(obs()), post(obs(id="obs-2", code={"text": CANARY})))
    [issue] = _door(doc).issues
    assert issue.diagnostics == "Bundle.entry[1]: Observation.code has no coding with a code"
    assert _mapper(body(doc)).reason == "Observation.code has no coding with a code"


# --- a Bundle that yields nothing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        bundle("collection"),
        bundle("transaction", {"request": {"method": "DELETE", "url": "Practitioner/p1"}}),
        bundle("collection", {"resource": {"resourceType": "OperationOutcome", "issue": []}}),
    ],
    ids=["empty collection", "transaction deleting an unmapped type", "only an OperationOutcome"],
)
def test_a_bundle_that_maps_to_nothing_is_refused_not_dead_lettered(doc):
    refusal = _door(doc)
    assert (refusal.status, refusal.issues[0].expression) == (422, "Bundle.entry")
    assert _mapper(body(doc)).reason_code == R.NOTHING_TO_MAP


# --- a batch: each entry stored, and checked, on its own ---------------------------------------------


def _batch_entries(*entries: dict[str, Any]) -> list[intake.Entry]:
    return intake.bundle_plan(body(bundle("batch", *entries))).entries


def test_a_batch_entry_is_refused_on_its_own_as_the_mapper_would_refuse_its_record():
    good, bad = obs(), obs(id="obs-2", status=CANARY)
    stored, refused = _batch_entries(post(good), post(bad))
    assert stored.item is not None and stored.refusal is None
    assert refused.refusal is not None and refused.item is None
    assert (refused.status, refused.refusal.issues[0].expression) == (400, "Observation.status")
    would_be = json.dumps(bad, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert _mapper(would_be).reason_code == R.INVALID_RESOURCE
    assert isinstance(run_mapper(map_fhir, stored.item.payload, CTX, MappingOptions()), Mapped)


def test_a_urn_uuid_between_batch_entries_resolves_in_a_transaction_only():
    urn = "urn:uuid:0b7bcb52-0000-4a4d-a6f0-7f3a00000009"
    patient = golden("patient_ipp_only", id=None)
    observation = obs(id=None, subject={"reference": urn})
    entries = (post(patient, urn), post(observation))
    [patient_entry, observation_entry] = _batch_entries(*entries)
    assert patient_entry.refusal is None
    assert observation_entry.refusal is not None
    assert (observation_entry.status, observation_entry.refusal.issues[0].expression) == (
        422,
        "Observation.subject",
    )
    assert _mapper(body(observation)).reason_code == R.NO_PATIENT  # what the batch would have stored
    transaction = intake.bundle_plan(body(bundle("transaction", *entries)))
    events = map_fhir(transaction.items[0].payload, CTX, MappingOptions())
    assert sorted(e.kind for e in events) == ["observation", "patient"]


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        (f"Observation?code={CANARY}", 422, R.UNSUPPORTED_REQUEST),
        ("Observation/has space", 422, R.UNSUPPORTED_REQUEST),
        ("Practitioner/p1", 404, R.NOTHING_TO_MAP),
    ],
)
def test_a_batch_delete_is_refused_when_its_retraction_would_name_nothing(url, status, code):
    [entry] = _batch_entries({"request": {"method": "DELETE", "url": url}})
    assert entry.refusal is not None and entry.status == status
    assert entry.refusal.issues[0].expression == "Bundle.entry[0].request.url"
    one = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": url}}],
    }
    assert _mapper(body(one)).reason_code == code  # what the door would have stored


def test_a_delete_of_an_id_that_is_no_fhir_id_is_refused():
    refusal = _door_delete("Observation", "a" * 65)
    assert (refusal.status, refusal.issues[0].expression) == (422, "Observation.id")
    assert intake.delete_item("Observation", "obs-1", None).status == 204


def _door_delete(rtype: str, rid: str) -> Refusal:
    with pytest.raises(Refusal) as caught:
        intake.delete_item(rtype, rid, None)
    return caught.value


# --- reads: the hub keeps no readable copy -----------------------------------------------------------


def test_a_read_in_a_transaction_refuses_the_transaction():
    doc = bundle("transaction", post(obs()), {"request": {"method": "GET", "url": "Patient/pat-1001"}})
    refusal = _door(doc)
    assert (refusal.status, refusal.issues[0].expression) == (422, "Bundle.entry[1].request.method")
    assert "GET or HEAD" in refusal.issues[0].diagnostics and refusal.issues[0].code == "not-supported"


def test_a_read_in_a_batch_is_answered_405_and_the_rest_is_stored():
    entries = _batch_entries(post(obs()), {"request": {"method": "HEAD", "url": "Patient/pat-1001"}})
    assert [e.status for e in entries] == [201, 405]
    assert entries[0].item is not None and entries[1].item is None
    refusal = entries[1].refusal
    assert refusal is not None and refusal.issues[0].expression == "Bundle.entry[1].request.method"
    assert refusal.issues[0].code == "not-supported"


# --- the shared function itself ----------------------------------------------------------------------


def test_golden_inputs_pass_the_check_and_the_door():
    for path in sorted(GOLDEN.glob("*.json")):
        if path.name.endswith(".expected.json") or path.name.startswith("notification"):
            continue
        doc = json.loads(path.read_text("utf-8"))
        if doc["resourceType"] == "Bundle":
            intake.bundle_plan(path.read_bytes()) if doc["type"] in intake.ROOT_BUNDLE_TYPES else None
        else:
            intake.resource_item(path.read_bytes(), doc["resourceType"])
            check_mappable(doc, doc["resourceType"])


def test_the_check_does_not_touch_the_resource_and_names_no_value():
    resource = obs(subject={"reference": "Group/g1", "display": CANARY})
    before = copy.deepcopy(resource)
    with pytest.raises(Refused) as caught:
        check_mappable(resource, "Observation", "Bundle.entry[3]: ", lone_scope(resource, "Observation"))
    assert resource == before
    assert caught.value.reason == "Bundle.entry[3]: Observation.subject does not reference a Patient"
    assert CANARY not in str(caught.value) and SENDER not in str(caught.value)


def test_the_sender_scope_matters_only_by_being_there():
    """A subject known only as Patient/<id> is keyed by the sender's facility; without one (no door
    writes such a record), nothing names the patient."""
    resource = obs()
    check_mappable(resource, "Observation", "", lone_scope(resource, "Observation", "CHU-A"))
    with pytest.raises(Refused) as caught:
        check_mappable(resource, "Observation", "", lone_scope(resource, "Observation", ""))
    assert (caught.value.code, caught.value.location) == (R.NO_PATIENT, "Observation.subject")


# --- times: one decision whatever the hospital's zone ------------------------------------------------

_DIGITS = st.integers(0, 9).map(str)
ZONES = [
    ZoneInfo(z) for z in ("Europe/Paris", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Asia/Manila", "UTC")
]


@st.composite
def fhir_times(draw: st.DrawFn) -> str:
    year = draw(
        st.sampled_from(["0001", "0002", "0003", "1899", "1900", "2026", "2999", "9997", "9998", "9999"])
    )
    text = year
    for sep, top in (("-", 13), ("-", 32)):
        if draw(st.booleans()):
            text += f"{sep}{draw(st.integers(0, top)):02d}"
        else:
            return text
    if draw(st.booleans()):
        text += f"T{draw(st.integers(0, 24)):02d}:{draw(st.integers(0, 60)):02d}"
        if draw(st.booleans()):
            text += f":{draw(st.integers(0, 60)):02d}"
            if draw(st.booleans()):
                text += "." + "".join(draw(st.lists(_DIGITS, min_size=1, max_size=10)))
        zone = draw(st.sampled_from(["", "Z", "+14:00", "-12:00", "+01:00", "+15:00", "-05:30"]))
        text += zone
    return text


@settings(max_examples=400, deadline=None)
@given(fhir_times())
def test_a_time_the_check_accepts_reads_in_every_zone_and_the_shortcut_never_decides(text):
    try:
        check_time(text, "Observation.effectiveDateTime")
    except Refused as exc:
        assert exc.code == R.BAD_TIME and exc.location == "Observation.effectiveDateTime"
        assert _plainly_readable(text) is False
        return
    for zone in ZONES:
        parse_fhir_datetime(text, zone)  # raises TimeFormatError if the mapper, in that zone, could not
