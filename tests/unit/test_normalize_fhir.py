"""FHIR R4 → canonical events: golden cases, Avro fit, rejections without content, stable event ids."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import fastavro
import pytest

from formats.clinical.identity import ins_key
from schemas.registry import load_schema, parse_schema
from streams.normalize.envelope import RawContext, event_id
from streams.normalize.fhir import map_fhir, resource_event_id
from streams.normalize.options import MappingOptions
from streams.normalize.result import CANONICAL_KINDS, CanonicalEvent, MappingError, Rejection, run_mapper
from tests.support.golden import dumps, to_jsonable

GOLDEN_FHIR = Path(__file__).resolve().parent.parent / "golden" / "fhir"
INGEST_TIME = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
FACILITY, APPLICATION = "CHU-EXEMPLE", "EDS-FHIR"
CANARY = "CANARY-Zoé-7f3a"  # planted in inputs; must never come back in a rejection
CASES = sorted(p.name.removesuffix(".json") for p in GOLDEN_FHIR.glob("*.json") if ".expected." not in p.name)
SCHEMAS = {kind: parse_schema(load_schema(f"canonical/{kind}")) for kind in CANONICAL_KINDS}


def fhir_context(case: str, **changes: Any) -> RawContext:
    ctx = RawContext(
        raw_id=f"raw-{case}",
        protocol="fhir",
        connector="fhir_rest",
        facility=FACILITY,
        application=APPLICATION,
        message_id=f"msg-{case}",
        received_at=INGEST_TIME,
        topic="ingest.fhir.raw",
        partition=0,
        offset=7,
    )
    return replace(ctx, **changes)


def golden_input(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN_FHIR / f"{case}.json").read_text(encoding="utf-8"))
    return data


def run(
    resource: Any, case: str = "adhoc", options: MappingOptions | None = None, **ctx: Any
) -> list[CanonicalEvent]:
    payload = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    return map_fhir(payload, fhir_context(case, **ctx), options or MappingOptions())


def rejection(resource: Any) -> Rejection:
    payload = resource if isinstance(resource, bytes) else json.dumps(resource, ensure_ascii=False).encode()
    outcome = run_mapper(map_fhir, payload, fhir_context("adhoc"), MappingOptions())
    assert isinstance(outcome, Rejection), "expected a rejection"
    return outcome


def assert_no_canary(outcome: Rejection) -> None:
    for text in (outcome.reason, outcome.location, outcome.rule):
        assert CANARY not in text and "Zoé" not in text and "7f3a" not in text


# --- golden cases ------------------------------------------------------------------------------------


def test_golden_cases_are_present():
    assert len(CASES) >= 15
    for case in CASES:
        assert (GOLDEN_FHIR / f"{case}.expected.json").exists(), case


@pytest.mark.parametrize("case", CASES)
def test_golden(case):
    events = map_fhir((GOLDEN_FHIR / f"{case}.json").read_bytes(), fhir_context(case), MappingOptions())
    expected = json.loads((GOLDEN_FHIR / f"{case}.expected.json").read_text(encoding="utf-8"))
    actual = to_jsonable(events)
    assert actual == expected, dumps(actual)


@pytest.mark.parametrize("case", CASES)
def test_every_record_encodes_with_its_avro_schema(case):
    events = map_fhir((GOLDEN_FHIR / f"{case}.json").read_bytes(), fhir_context(case), MappingOptions())
    for event in events:
        schema = SCHEMAS[event.kind]
        fastavro.validation.validate(event.record, schema, raise_errors=True, strict=True)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, event.record)
        buf.seek(0)
        decoded: Any = fastavro.schemaless_reader(buf, schema, schema)
        assert to_jsonable([CanonicalEvent(event.kind, event.key, decoded)]) == to_jsonable([event])
        assert event.key == event.record["patient"]["key"]


def test_id_only_notification_yields_nothing_and_the_stage_dead_letters_it_as_such():
    payload = (GOLDEN_FHIR / "notification_id_only.json").read_bytes()
    assert map_fhir(payload, fhir_context("n"), MappingOptions()) == []
    outcome = run_mapper(map_fhir, payload, fhir_context("n"), MappingOptions())
    assert isinstance(outcome, Rejection) and outcome.reason_code == "nothing_to_map"


# --- event ids ------------------------------------------------------------------------------------------


def test_event_ids_are_deterministic():
    for case in CASES:
        payload = (GOLDEN_FHIR / f"{case}.json").read_bytes()
        first = [e.event_id for e in map_fhir(payload, fhir_context(case), MappingOptions())]
        second = [e.event_id for e in map_fhir(payload, fhir_context(case), MappingOptions())]
        assert first == second
        assert len(set(first)) == len(first)


def test_a_resource_version_keeps_its_event_id_whatever_message_carries_it():
    resource = golden_input("observation_lab_loinc_ucum")
    original = run(resource, "a")[0]
    replayed = run(resource, "b", raw_id="other", message_id="another-bundle", offset=999)[0]
    assert replayed.event_id == original.event_id
    assert original.event_id == resource_event_id(fhir_context("x"), "Observation", "obs-2001", "1")
    assert original.event_id == event_id(
        fhir_context("x", message_id="Observation/obs-2001"), "_history/1"
    ), "the documented formula"
    # the same version inside a Bundle, from the poller: still the same event
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}]}
    assert run(bundle, "poll", connector="fhir_poll")[0].event_id == original.event_id


def test_a_new_version_or_another_sender_is_another_event():
    resource = golden_input("observation_lab_loinc_ucum")
    v1 = run(resource)[0].event_id
    resource["meta"]["versionId"] = "2"
    assert run(resource)[0].event_id != v1
    assert run(golden_input("observation_lab_loinc_ucum"), facility="CHU-AUTRE")[0].event_id != v1


def test_unversioned_resources_are_identified_by_their_content():
    resource = golden_input("observation_weight_lb")  # an id, no meta.versionId
    first = run(resource, "a")[0].event_id
    reordered = json.loads(json.dumps(resource, sort_keys=True))
    reordered["meta"] = {"lastUpdated": "2026-03-15T12:00:00+01:00"}  # meta is not content
    assert run(reordered, "b")[0].event_id == first  # a re-delivery collapses
    corrected = copy.deepcopy(resource)
    corrected["valueQuantity"]["value"] = 155.1
    assert run(corrected, "a")[0].event_id != first  # a correction without a version does not


def test_resources_without_any_identity_fall_back_to_the_message():
    resource = golden_input("observation_weight_lb")
    del resource["id"]
    first = run(resource, message_id="m1")[0].event_id
    assert run(resource, message_id="m1")[0].event_id == first
    assert run(resource, message_id="m2")[0].event_id != first
    assert first == event_id(fhir_context("x", message_id="m1"), "resource")


def test_diagnostic_report_names_the_events_of_its_results_across_messages():
    lab = run(golden_input("observation_lab_loinc_ucum"), "lab")[0]
    report = run(golden_input("diagnostic_report_lab"), "report")[0]
    # versioned reference → computed; unversioned or unresolvable references cannot be named
    assert report.record["result_event_ids"] == [lab.event_id]


def test_bundle_results_resolve_to_the_entries():
    events = run(golden_input("bundle_collection"))
    by_kind: dict[str, list[CanonicalEvent]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    report = by_kind["diagnostic_report"][0]
    assert report.record["result_event_ids"] == [o.event_id for o in by_kind["observation"]]
    assert {e.key for e in events} == {"IPP0042141@1.2.250.1.999.1.1.1"}


def test_delete_retracts_every_version_up_to_the_one_deleted():
    events = run(golden_input("bundle_transaction"))
    retraction = events[-1]
    assert retraction.kind == "retraction" and retraction.record["kind"] == "DELETE"
    assert retraction.record["target_event_ids"] == [
        resource_event_id(fhir_context("x"), "Observation", "obs-0999", v) for v in ("1", "2", "3")
    ]
    assert retraction.record["target_source_reference"] == "Observation/obs-0999"


def test_delete_without_version_names_the_resource_only_and_deleted_versions_are_bounded():
    def delete(extra: dict[str, Any]) -> CanonicalEvent:
        bundle = {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [{"request": {"method": "DELETE", "url": "Observation/obs-1"}, **extra}],
        }
        return run(bundle)[0]

    plain = delete({})
    assert plain.record["target_event_ids"] == []
    assert plain.record["target_source_reference"] == "Observation/obs-1"
    many = delete({"response": {"status": "204", "etag": 'W/"250"'}})
    ids = many.record["target_event_ids"]
    assert len(ids) == 100 and ids[-1] == resource_event_id(fhir_context("x"), "Observation", "obs-1", "250")
    named = delete({"response": {"status": "204", "etag": 'W/"abc"'}})
    assert named.record["target_event_ids"] == [
        resource_event_id(fhir_context("x"), "Observation", "obs-1", "abc")
    ]
    assert len({plain.event_id, many.event_id, named.event_id}) == 3


# --- patient linkage and identity --------------------------------------------------------------------


def patient_with(extension: list[dict[str, Any]], ins: bool = True) -> dict[str, Any]:
    resource = golden_input("patient_ins_qualified")
    resource["extension"] = extension
    if not ins:
        resource["identifier"] = resource["identifier"][1:]
    return resource


def reliability(*statuses: str, method: str | None = None) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = [{"url": "identityStatus", "valueCoding": {"code": s}} for s in statuses]
    if method:
        subs.append({"url": "methodCollection", "valueCoding": {"code": method}})
    return [
        {
            "url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
            "extension": subs,
        }
    ]


@pytest.mark.parametrize(
    ("extension", "ins", "status", "qualified"),
    [
        (reliability("VALI", method="INSI"), True, "QUAL", True),
        (reliability("VALI", method="INSI"), False, "VALI", False),  # no INS: nothing to qualify
        (reliability("VALI", method="CV"), True, "VALI", False),  # Carte Vitale is not INSi
        (reliability("QUAL"), True, "QUAL", True),  # PAM France code sent as such
        (reliability("vali", "DOUT", method="INSI"), True, "DOUT", False),  # an attribute forbids it
        (reliability("PROV"), True, "PROV", False),
        ([], True, None, False),
    ],
)
def test_identity_reliability(extension, ins, status, qualified):
    patient = run(patient_with(extension, ins))[0].record["patient"]
    assert (patient["identity_reliability"], patient["ins_qualified"]) == (status, qualified)
    assert (patient["ins"] is not None) == ins


def observation_for(subject: dict[str, Any]) -> dict[str, Any]:
    resource = golden_input("observation_weight_lb")
    resource["subject"] = subject
    return resource


def test_subject_linkage_order():
    ipp = {"system": "urn:oid:1.2.250.1.999.1.1.1", "value": "IPP0042137"}
    assert (
        run(observation_for({"reference": "Patient/p", "identifier": ipp}))[0].key
        == "IPP0042137@1.2.250.1.999.1.1.1"
    )
    assert run(observation_for({"reference": "Patient/p"}))[0].key == f"Patient/p@{FACILITY}"
    # an INS alone is not a hospital key: the reference is used instead
    ins = {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "285032505612395"}
    assert (
        run(observation_for({"reference": "Patient/p", "identifier": ins}))[0].key == f"Patient/p@{FACILITY}"
    )
    # a contained Patient is resolved like a Bundle entry
    contained = observation_for({"reference": "#pat"})
    contained["contained"] = [{**golden_input("patient_ipp_only"), "id": "pat"}]
    assert run(contained)[0].key == "IPP0042139@https://chu-exemple.test/fhir/NamingSystem/ipp"


def test_an_identifier_given_once_in_a_bundle_serves_every_reference_to_that_patient():
    events = run(golden_input("notification_full_resource"))
    assert [e.kind for e in events] == ["encounter", "observation"]
    assert {e.key for e in events} == {"IPP0042139@https://chu-exemple.test/fhir/NamingSystem/ipp"}


# --- options ---------------------------------------------------------------------------------------------


def test_units_are_converted_only_when_the_options_say_so():
    resource = golden_input("observation_weight_lb")
    kept = run(resource, options=MappingOptions(unit_conversions={}))[0].record["value_quantity"]
    assert kept == {
        "value": 154.3,
        "comparator": None,
        "unit": "[lb_av]",
        "unit_system": "http://unitsofmeasure.org",
        "original_unit": "lb",
    }


def test_times_without_offset_are_read_in_the_configured_zone():
    resource = golden_input("observation_weight_lb")  # effectiveDateTime "2026-03-14"
    cayenne = MappingOptions(timezone=ZoneInfo("America/Cayenne"))
    record = run(resource, options=cayenne)[0].record
    assert record["effective_time"].isoformat() == "2026-03-14T03:00:00+00:00"
    assert record["effective_time_precision"] == "day"
    patient = golden_input("patient_ins_not_qualified")  # died 2026-02-01T23:30:00+01:00
    assert run(patient, options=cayenne)[0].record["death_date"] == "2026-02-01"
    assert (
        run(patient, options=MappingOptions(timezone=ZoneInfo("Asia/Tokyo")))[0].record["death_date"]
        == "2026-02-02"
    )


# --- rejections ---------------------------------------------------------------------------------------------


def obs(**changes: Any) -> dict[str, Any]:
    resource = golden_input("observation_lab_loinc_ucum")
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def bundle(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


INS_BAD_KEY = "2850325056123" + f"{(ins_key('2850325056123') + 1) % 97:02d}"

REJECTIONS: list[tuple[str, Any, str, str]] = [
    # (name, payload, reason code, location)
    ("not json", f'{{"resourceType": "Patient", "name": "{CANARY}"'.encode(), "invalid_json", ""),
    ("not utf-8", b'{"resourceType": "Patient", "id": "\xe9\xff"}', "invalid_json", ""),
    ("NaN", b'{"resourceType": "Observation", "valueQuantity": {"value": NaN}}', "invalid_json", ""),
    (
        "overflowing float",
        b'{"resourceType": "Observation", "valueQuantity": {"value": 1e400}}',
        "invalid_json",
        "",
    ),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "invalid_json", ""),
    ("a JSON array", [CANARY], "invalid_resource", "payload"),
    ("no resourceType", {"id": CANARY}, "invalid_resource", "payload"),
    (
        "bad decimal",
        obs(valueQuantity={"value": CANARY}),
        "invalid_resource",
        "Observation.valueQuantity.value",
    ),
    ("bad date", obs(effectiveDateTime=CANARY), "invalid_resource", "Observation.effectiveDateTime"),
    ("unknown element", obs(**{CANARY: 1}), "invalid_resource", "Observation"),
    ("two values", obs(valueString=CANARY), "invalid_resource", "Observation"),
    ("status not in value set", obs(status=CANARY), "invalid_resource", "Observation.status"),
    (
        "gender not in value set",
        {**golden_input("patient_ipp_only"), "gender": CANARY},
        "invalid_resource",
        "Patient.gender",
    ),
    ("unknown contained type", obs(contained=[{"resourceType": CANARY}]), "invalid_resource", "Observation"),
    (
        "leap second",
        obs(effectiveDateTime="2026-03-15T08:30:60Z"),
        "bad_time",
        "Observation.effectiveDateTime",
    ),
    (
        "unmapped type",
        {"resourceType": "Practitioner", "name": [{"family": CANARY}]},
        "unsupported_resource",
        "resourceType",
    ),
    ("unknown type", {"resourceType": CANARY}, "unsupported_resource", "resourceType"),
    (
        "bundle of unmapped types",
        bundle(
            {"resource": {"resourceType": "Practitioner", "name": [{"family": CANARY}]}}, kind="collection"
        ),
        "unsupported_resource",
        "Bundle.entry",
    ),
    (
        "entry without resourceType",
        bundle({"resource": {"id": CANARY}}, kind="collection"),
        "invalid_resource",
        "Bundle.entry[0].resource",
    ),
    (
        "invalid entry resource",
        bundle({"resource": obs(issued=CANARY)}, kind="collection"),
        "invalid_resource",
        "Observation.issued",
    ),
    (
        "PATCH",
        bundle(
            {
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json"},
                "request": {"method": "PATCH", "url": "Observation/obs-1"},
            }
        ),
        "unsupported_request",
        "Bundle.entry[0].request.method",
    ),
    (
        "conditional DELETE",
        bundle({"request": {"method": "DELETE", "url": f"Patient?identifier={CANARY}"}}),
        "unsupported_request",
        "Bundle.entry[0].request.url",
    ),
    (
        "DELETE of a search url",
        bundle({"request": {"method": "DELETE", "url": CANARY}}),
        "unsupported_request",
        "Bundle.entry[0].request.url",
    ),
    (
        "sampled data",
        obs(
            valueQuantity=None,
            valueSampledData={"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2"},
        ),
        "unsupported_value",
        "Observation.valueSampledData",
    ),
    ("code without coding", obs(code={"text": CANARY}), "no_code", "Observation.code"),
    ("no subject", obs(subject=None), "no_patient", "Observation.subject"),
    (
        "subject is a group",
        obs(subject={"reference": "Group/g1", "display": CANARY}),
        "no_patient",
        "Observation.subject",
    ),
    (
        "subject urn unresolved",
        obs(subject={"reference": "urn:uuid:0b7bcb52-7e58-4a4d-a6f0-7f3a00000000"}),
        "no_patient",
        "Observation.subject",
    ),
    (
        "patient with INS only",
        {
            **golden_input("patient_ins_qualified"),
            "identifier": golden_input("patient_ins_qualified")["identifier"][:1],
        },
        "no_patient",
        "Patient.identifier",
    ),
    (
        "INS with a wrong key and no IPP left",  # next to an IPP it is dropped: a partial mapping
        {
            **golden_input("patient_ipp_only"),
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": INS_BAD_KEY}],
            "name": [{"family": CANARY}],
        },
        "bad_ins_key",
        "Patient.identifier",
    ),
    (
        "encounter without identity",
        bundle(
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "planned",
                    "class": {"code": "AMB"},
                    "subject": {"reference": "Patient/p"},
                }
            },
            kind="collection",
        ),
        "no_visit",
        "Encounter.identifier",
    ),
]


@pytest.mark.parametrize(("name", "payload", "code", "location"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections_are_precise_and_carry_no_input_value(name, payload, code, location):
    outcome = rejection(payload)
    assert (outcome.reason_code, outcome.location) == (code, location), outcome
    assert outcome.reason
    assert_no_canary(outcome)


def test_every_rejection_code_is_exercised():
    assert {r[2] for r in REJECTIONS} == {
        "invalid_json",
        "invalid_resource",
        "bad_time",
        "unsupported_resource",
        "unsupported_request",
        "unsupported_value",
        "no_code",
        "no_patient",
        "bad_ins_key",
        "no_visit",
    }


def test_validation_reasons_name_path_and_rule():
    outcome = rejection(obs(valueQuantity={"value": CANARY}))
    assert outcome.reason == "Observation.valueQuantity.value: value_error: not a FHIR Decimal"
    assert outcome.rule == "FHIR R4 (R4B model): value_error: not a FHIR Decimal"
    in_bundle = rejection(bundle({"resource": obs(status=None, code=None)}, kind="collection"))
    assert in_bundle.reason.startswith("Bundle.entry[0]: Observation.")
    assert in_bundle.location.startswith("Observation.")


def test_mapping_error_is_what_map_fhir_raises():
    with pytest.raises(MappingError) as info:
        run(obs(subject=None))
    assert info.value.code == "no_patient"


def test_lax_json_types_accepted_by_validation_are_read_as_their_fhir_type():
    resource = obs(valueQuantity=None, valueBoolean="true")
    assert run(resource)[0].record["value_boolean"] is True
    resource = obs(valueQuantity={"value": "5.20", "unit": "mmol/l"})
    assert run(resource)[0].record["value_quantity"]["value"] == 5.2


def test_each_contained_patient_identifies_its_own_resource():
    entries = []
    for n in range(30):
        resource = golden_input("observation_weight_lb")
        resource["id"] = f"obs-{n}"
        resource["subject"] = {"reference": "#p"}
        resource["contained"] = [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [{"system": "urn:oid:1.2.3", "value": f"IPP{n}"}],
            }
        ]
        entries.append({"resource": resource})
    events = run(bundle(*entries, kind="collection"))
    assert [e.key for e in events] == [f"IPP{n}@1.2.3" for n in range(30)]


def test_searchset_warnings_are_not_data():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational"}],
    }
    searchset = bundle({"resource": outcome, "search": {"mode": "outcome"}}, kind="searchset")
    assert run(searchset) == []
