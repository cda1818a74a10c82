"""Issue #18, the mapping half: one test (or a few) per point, each failing on the code before the fix.

Identities scoped by their sender, partial mappings (movement or INS left out, the rest kept), correct
reasons, ASCII-only digits, no raw exception from extreme dates or huge numbers, PCD-01 device trees,
compound given names, IEEE 11073 units through both doors. All data here is synthetic.
"""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from affluent.core.settings import DeviceSettings, DeviceToken
from connectors.devices.http import DeviceHttpServer
from connectors.devices.intake import token_hash
from connectors.devices.metrics import DeviceMetrics
from formats.clinical.identity import ins_key, patient_ref_of, valid_matricule
from formats.clinical.times import PARIS, TimeFormatError, fast_hl7_ts, parse_fhir_datetime, parse_hl7_ts
from formats.devices.templates import PayloadError, load_templates, read_payload
from schemas.registry import load_schema, parse_schema
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import Mapped, Rejection, run_mapper
from streams.normalize.stage import NormalizeMetrics, Normalizer
from streams.opposition.objection import Objection, registry_entries
from streams.pseudonymize.opposition import identity_forms, is_opposed
from tests.support.canonical_samples import load_test_keys
from tests.support.golden import hl7_context, hl7_text

OPTIONS = MappingOptions()
KEYS = load_test_keys()
INS_OK = f"2850375123456{ins_key('2850375123456'):02d}"
INS_BAD_KEY = "285037512345600"
NIR = "1.2.250.1.213.1.4.8"
FULL_WIDTH = INS_OK.translate({ord(c): 0xFF10 + int(c) for c in "0123456789"})
CANARY = "ZORGLUBINE-FICTIVE"


def golden(case: str) -> Mapped:
    text = hl7_text(case)
    return map_hl7(text, hl7_context(case, text), OPTIONS)


def hl7(*segments: str, facility: str = "CH_NORD^1.2.250.1.71.4.2.901^ISO", trigger: str = "ADT^A04") -> str:
    header = f"MSH|^~\\&|SIH|{facility}|AFFLUENT|X|20240510093000||{trigger}|T1|P|2.5"
    return "\r".join((header, *segments)) + "\r"


def pid(ids: str, name: str = f"{CANARY}^Jeanne^^^^^L", reliability: str = "") -> str:
    fields = {1: "1", 3: ids, 5: name, 7: "19790214", 8: "F", 32: reliability}
    return "PID|" + "|".join(fields.get(i, "") for i in range(1, 33))


def pv1(visit: str = "VN1^^^CH_NORD") -> str:
    return "PV1|1|O|CONSULT" + "|" * 16 + visit


HL7_CTX = RawContext("raw-1", "hl7v2", "mllp", "CH_NORD", "SIH", "T1", datetime(2024, 9, 30, tzinfo=UTC))
FHIR_CTX = RawContext(
    "raw-2",
    "fhir",
    "fhir_rest",
    "CH_NORD",
    "EDS",
    "m-2",
    datetime(2026, 3, 16, tzinfo=UTC),
    "ingest.fhir.raw",
)


def fhir(resource: dict[str, Any], ctx: RawContext = FHIR_CTX) -> Mapped | Rejection:
    return run_mapper(map_fhir, json.dumps(resource, ensure_ascii=False).encode(), ctx, OPTIONS)


def patient(*identifiers: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": list(identifiers), "name": [{"family": CANARY}]}


# --- 1. an identifier without assigning authority is scoped by the sending facility -------------------


def test_same_ipp_without_authority_in_two_hospitals_gives_two_patients() -> None:
    nord, sud = golden("adt_a04_no_authority_ch_nord"), golden("adt_a04_no_authority_ch_sud")
    assert {e.key for e in nord} == {"0045600001@CH_NORD"}
    assert {e.key for e in sud} == {"0045600001@CH_SUD"}
    assert nord[0].record["patient"]["ipp"]["authority_name"] == "CH_NORD"
    assert nord[1].record["encounter"]["authority_name"] == "CH_NORD"  # the visit number too


def test_an_unscoped_identifier_never_yields_a_key_ending_with_at() -> None:
    outcome = run_mapper(map_hl7, hl7(pid("42^^^^PI"), pv1(), facility=""), HL7_CTX, OPTIONS)
    assert isinstance(outcome, Rejection) and (outcome.reason_code, outcome.location) == (
        "no_patient",
        "PID-3",
    )
    only_oid = map_hl7(hl7(pid("42"), pv1(), facility="^1.2.250.1.71.4.2.903^ISO"), HL7_CTX, OPTIONS)
    assert only_oid[0].key == "42@1.2.250.1.71.4.2.903"


def test_hl7_and_fhir_scope_an_unqualified_identifier_the_same_way() -> None:
    hl7_key = golden("adt_a04_no_authority_ch_nord")[0].key
    outcome = fhir(patient({"value": "0045600001"}))
    assert isinstance(outcome, Mapped) and outcome[0].key == hl7_key


def test_opposition_forms_follow_the_scoped_key() -> None:
    """An objection registered for (IPP, facility) withholds that hospital's patient, not the other's."""
    nord = golden("adt_a04_no_authority_ch_nord")[0].record["patient"]
    sud = golden("adt_a04_no_authority_ch_sud")[0].record["patient"]
    objection = Objection(ins=None, ipp="0045600001", authority="CH_NORD")
    assert identity_forms(nord) == tuple(objection.forms()) == ("IPP|CH_NORD|0045600001",)
    assert identity_forms(nord) == identity_forms(patient_ref_of("0045600001", "CH_NORD"))
    entries = set(registry_entries(KEYS, objection))
    assert is_opposed(entries, nord, KEYS) and not is_opposed(entries, sud, KEYS)


def test_merge_retired_identity_without_authority_is_scoped_too() -> None:
    text = hl7(pid("77^^^CH_NORD^PI"), "MRG|76^^^^PI", trigger="ADT^A40")
    events = map_hl7(text, HL7_CTX, OPTIONS)
    assert events[1].key == "76@CH_NORD" and events[2].record["retired_patient"]["key"] == "76@CH_NORD"


# --- 2. a movement without a visit number: the patient goes on, the movement is dead-lettered ---------


class _FakeRegistry:
    """Just enough of schemas.registry.Registry for codecs and decoding, in memory."""

    def __init__(self) -> None:
        self.schemas: dict[int, Any] = {}

    def register(self, subject: str, schema_text: str, compatibility: str | None = None) -> int:
        schema_id = len(self.schemas) + 1
        self.schemas[schema_id] = parse_schema(schema_text)
        return schema_id

    def writer_schema(self, schema_id: int) -> Any:
        return self.schemas[schema_id]

    def compiled_reader(self, schema_id: int) -> None:
        return None


def _raw(registry: _FakeRegistry, case: str) -> bytes:
    import io

    text = hl7_text(case)
    ctx = hl7_context(case, text)
    schema_id = registry.register("ingest.hl7v2.raw-value", load_schema("raw_message"))
    record = {
        "raw_id": ctx.raw_id,
        "protocol": "hl7v2",
        "connector": "mllp",
        "source_facility": ctx.facility,
        "source_application": ctx.application,
        "message_id": ctx.message_id,
        "message_type": "ADT^A01",
        "peer": None,
        "received_at": ctx.received_at,
        "content_type": "x-application/hl7-v2+er7",
        "declared_charset": "UNICODE UTF-8",
        "charset_mismatch": False,
        "payload": text.encode("utf-8"),
        "attributes": {},
    }
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, registry.schemas[schema_id], record)
    return struct.pack(">bI", 0, schema_id) + buffer.getvalue()


def test_the_stage_writes_the_patient_and_dead_letters_the_movement_as_partial() -> None:
    registry = _FakeRegistry()
    metrics = NormalizeMetrics(CollectorRegistry())
    stage = Normalizer(registry, OPTIONS, metrics, {"hl7v2": map_hl7})  # type: ignore[arg-type]
    outputs = stage.process(_raw(registry, "adt_a01_no_visit_partial"), "ingest.hl7v2.raw", 0, 3)
    assert [o.topic for o in outputs] == ["canonical.patient", "dlq.normalize"]
    from schemas.registry import decode

    dead = decode(registry, outputs[1].value)  # type: ignore[arg-type]
    assert (dead["reason_code"], dead["location"]) == ("no_visit", "PV1-19")
    assert dead["attributes"] == {"message_type": "ADT^A01", "outcome": "partial", "events": "1"}
    assert metrics.dead_letters.labels("normalize", "no_visit")._value.get() == 1
    assert metrics.records_out.labels("patient")._value.get() == 1
    assert metrics.partial.labels("no_visit")._value.get() == 1  # counted as a partial mapping


def test_an_a08_without_visit_is_whole_and_a_lone_fhir_encounter_without_identity_still_refused() -> None:
    a08 = run_mapper(map_hl7, hl7(pid("42^^^CH_NORD^PI"), "PV1|1|N", trigger="ADT^A08"), HL7_CTX, OPTIONS)
    assert isinstance(a08, Mapped) and not a08.dropped
    encounter = fhir({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
    assert isinstance(encounter, Rejection) and encounter.reason_code == "no_visit"


# --- 3. an INS failing its key check next to an IPP: dropped and flagged, the record kept -------------


def test_hl7_bad_ins_key_next_to_an_ipp_keeps_the_record() -> None:
    events = golden("adt_a31_bad_ins_key_kept")
    assert (
        events[0].record["patient"]["ins"] is None and events[0].record["patient"]["ins_qualified"] is False
    )
    assert [(r.reason_code, r.location) for r in events.dropped] == [("bad_ins_key", "PID-3")]


def test_fhir_bad_ins_key_next_to_an_ipp_keeps_the_record() -> None:
    outcome = fhir(
        patient(
            {"system": f"urn:oid:{NIR}", "value": INS_BAD_KEY}, {"system": "urn:oid:1.2.3.4", "value": "9"}
        )
    )
    assert isinstance(outcome, Mapped) and outcome[0].key == "9@1.2.3.4"
    assert outcome[0].record["patient"]["ins"] is None
    assert [(r.reason_code, r.location) for r in outcome.dropped] == [("bad_ins_key", "Patient.identifier")]
    assert INS_BAD_KEY not in outcome.dropped[0].reason


def test_bad_ins_key_with_no_other_identifier_is_still_refused() -> None:
    outcome = fhir(patient({"system": f"urn:oid:{NIR}", "value": INS_BAD_KEY}))
    assert isinstance(outcome, Rejection) and outcome.reason_code == "bad_ins_key"
    refused = run_mapper(map_hl7, hl7(pid(f"{INS_BAD_KEY}^^^ASIP&{NIR}&ISO^INS"), pv1()), HL7_CTX, OPTIONS)
    assert isinstance(refused, Rejection) and refused.reason_code == "bad_ins_key"


def test_a_bad_ins_in_a_subject_identifier_falls_back_to_the_reference() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {
            "reference": "Patient/p1",
            "identifier": {"system": f"urn:oid:{NIR}", "value": INS_BAD_KEY},
        },
        "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    outcome = fhir(obs)
    assert isinstance(outcome, Mapped) and outcome[0].key == "Patient/p1@CH_NORD"
    assert [r.location for r in outcome.dropped] == ["Observation.subject.identifier"]


# --- 4. a FHIR Patient without identifier gets a reason that says so -----------------------------------


def test_patient_without_identifier_is_not_told_about_an_ins() -> None:
    outcome = fhir({"resourceType": "Patient", "name": [{"family": CANARY}]})
    assert isinstance(outcome, Rejection) and outcome.reason_code == "no_patient"
    assert "INS" not in outcome.reason and CANARY not in outcome.reason
    only_ins = fhir(patient({"system": f"urn:oid:{NIR}", "value": INS_OK}))
    assert isinstance(only_ins, Rejection) and "besides the INS" in only_ins.reason


# --- 5. ASCII digits only -------------------------------------------------------------------------------


def test_a_full_width_ins_is_not_an_ins() -> None:
    assert valid_matricule(INS_OK) and not valid_matricule(FULL_WIDTH)
    assert not valid_matricule(INS_OK[:13] + "²" + INS_OK[14])  # str.isdigit says yes, int() raised
    text = hl7(pid(f"{FULL_WIDTH}^^^ASIP&{NIR}&ISO^INS~42^^^CH_NORD^PI", reliability="QUAL"), pv1())
    events = map_hl7(text, HL7_CTX, OPTIONS)
    assert (
        events[0].record["patient"]["ins"] is None and events[0].record["patient"]["ins_qualified"] is False
    )
    assert [r.reason_code for r in events.dropped] == ["bad_ins_key"]
    outcome = fhir(patient({"system": f"urn:oid:{NIR}", "value": FULL_WIDTH}, {"value": "42"}))
    assert isinstance(outcome, Mapped) and outcome[0].record["patient"]["ins"] is None


def test_full_width_dates_and_oids_are_refused() -> None:
    with pytest.raises(TimeFormatError):
        parse_hl7_ts("２０２４０３１５")
    with pytest.raises(TimeFormatError):
        parse_fhir_datetime("２０２４-03-15")
    assert patient_ref_of("42", "１.２.３")["ipp"]["authority_oid"] is None


# --- 6. extreme dates and huge numbers are refusals, never raw exceptions -----------------------------


@pytest.mark.parametrize("value", ["00010101000000+1400", "00010101", "99991231235959-1200", "9999123123"])
def test_hl7_extreme_dates_are_bad_time(value: str) -> None:
    text = hl7("EVN||" + value, pid("42^^^CH_NORD^PI"), pv1())
    outcome = run_mapper(map_hl7, text, HL7_CTX, OPTIONS)
    assert isinstance(outcome, Rejection) and (outcome.reason_code, outcome.location) == ("bad_time", "EVN-2")


@pytest.mark.parametrize("year", ["0001", "0002", "0003", "9997", "9998", "9999"])
@pytest.mark.parametrize(
    "tail", ["0101000000+1400", "0101000000-1200", "1231235959+1400", "1231235959-1200", "0101"]
)
def test_the_fast_path_agrees_with_the_general_one_next_to_the_limits(year: str, tail: str) -> None:
    value = year + tail
    try:
        general = parse_hl7_ts(value)
    except TimeFormatError:
        general = None
    fast = fast_hl7_ts(value, PARIS)
    assert fast is None or fast == general


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59Z", "0001"]
)
def test_fhir_extreme_dates_are_bad_time(value: str) -> None:
    outcome = fhir({**patient({"value": "42"}), "deceasedDateTime": value})
    assert isinstance(outcome, Rejection) and outcome.reason_code == "bad_time"


SP = b'{"deviceId": "BPM-00A1B2C3", "measuredAt": "2026-11-24T09:14:00+01:00", "systolic": %s, "diastolic": 80}'


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (SP % (b"1" + b"0" * 400), "wrong_type"),  # an integer no double holds
        (SP % (b"1" + b"0" * 5000), "not_json"),  # longer than Python converts
        (SP % b"1e400", "wrong_type"),  # json reads it as infinity
    ],
)
def test_device_payload_with_huge_numbers_is_refused(body: bytes, code: str) -> None:
    template = load_templates()["bp-single"]
    with pytest.raises(PayloadError) as info:
        read_payload(template, body)
    assert info.value.code == code


def test_the_device_door_answers_400_not_500_for_a_huge_integer() -> None:
    class _Writer:
        async def write(self, message: Any) -> None:
            raise AssertionError("nothing is stored for a refused payload")

    token = "test-token-not-a-secret"
    settings = DeviceSettings(
        port=0, metrics_port=None, tokens=[DeviceToken(sha256=token_hash(token), sender="GW")]
    )
    server = DeviceHttpServer(settings, load_templates(), _Writer(), DeviceMetrics(CollectorRegistry()))  # type: ignore[arg-type]

    async def post() -> tuple[int, dict[str, Any]]:
        async with TestClient(TestServer(server.app())) as client:
            body = SP % (b"1" + b"0" * 400)
            resp = await client.post(
                "/devices/bp-single", data=body, headers={"Authorization": f"Bearer {token}"}
            )
            return resp.status, await resp.json()

    status, answer = asyncio.run(post())
    assert status == 400 and answer["error"] == "wrong_type"


# --- 7. PCD-01 device trees: "1", "1.0.1" are device rows; metrics take their MDS's EUI-64 -------------


def test_pcd01_tree_rows_are_not_observations_and_metrics_keep_their_eui64() -> None:
    events = golden("oru_r01_pcd01_tree")
    observations = [e.record for e in events if e.kind == "observation"]
    assert [o["code"]["code"] for o in observations] == ["150021", "150022", "150456"]
    assert all(o["status"] != "cancelled" for o in observations)
    assert {o["device"]["id"] for o in observations} == {"1122334455667788"}
    assert [o["device"]["hierarchy"] for o in observations] == ["1.0.1.1", "1.0.1.2", "1.1.1.1"]


def test_a_containment_ordinal_of_thousands_of_digits_is_read_without_int() -> None:
    """Found by `make fuzz` (10 min, hl7_normalizer): int() of a 5,000-digit OBX-4 level raised
    ValueError (Python's int-from-text digit limit) out of the mapper instead of a mapping."""
    huge = "1.1.0." + "9" * 5000
    obx = f"OBX|2||69643^MDC_DEV_ANALY_SAT_O2_VMD^MDC|{huge}|||||||X"
    text = hl7(pid("42^^^CH_NORD^PI"), "OBR|1|||P^P^L|||20240316", obx, trigger="ORU^R01")
    outcome = run_mapper(map_hl7, text, HL7_CTX, OPTIONS)
    assert isinstance(outcome, (Mapped, Rejection))


def test_a_lab_sub_id_without_value_is_still_an_observation() -> None:
    obx = "OBX|1||777-3^Plaquettes^LN|1|||||||X"
    text = hl7(pid("42^^^CH_NORD^PI"), "OBR|1|||P^P^L|||20240316", obx, trigger="ORU^R01")
    events = map_hl7(text, HL7_CTX, OPTIONS)
    assert [e.kind for e in events] == ["observation", "diagnostic_report"]
    assert events[0].record["status"] == "cancelled"


# --- 8. compound given names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xpn", "given"),
    [
        (f"{CANARY}^JEAN PIERRE^^^^^L", ["JEAN", "PIERRE"]),
        (f"{CANARY}^JEAN PIERRE^JEAN PIERRE^^^^L", ["JEAN", "PIERRE"]),
        (f"{CANARY}^JEAN PIERRE^JEAN PIERRE MARIE^^^^L", ["JEAN", "PIERRE", "MARIE"]),
        (f"{CANARY}^JEAN PIERRE^MARIE^^^^L", ["JEAN", "PIERRE", "MARIE"]),
        (f"{CANARY}^JEAN^JEAN PIERRE^^^^L", ["JEAN", "PIERRE"]),
    ],
)
def test_compound_given_names_are_listed_once_each_in_order(xpn: str, given: list[str]) -> None:
    events = map_hl7(hl7(pid("42^^^CH_NORD^PI", name=xpn), pv1()), HL7_CTX, OPTIONS)
    assert events[0].record["names"][0]["given"] == given
    assert golden("adt_a04_no_authority_ch_nord")[0].record["names"][0]["given"] == [
        "JEAN",
        "PIERRE",
        "MARIE",
    ]


# --- 9. MDC units through the FHIR door as through the HL7 one --------------------------------------------


@pytest.mark.parametrize(
    ("code", "unit", "ucum"),
    [("266016", "MDC_DIM_MMHG", "mm[Hg]"), ("262688", None, "%"), ("MDC_DIM_INCH", None, "[in_i]")],
)
def test_an_mdc_unit_becomes_ucum_in_both_mappers(code: str, unit: str | None, ucum: str) -> None:
    quantity = {
        "value": 5,
        "system": "urn:iso:std:iso:11073:10101",
        "code": code,
        **({"unit": unit} if unit else {}),
    }
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150021"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": quantity,
    }
    outcome = fhir(obs)
    assert isinstance(outcome, Mapped)
    from_fhir = outcome[0].record["value_quantity"]
    obx = f"OBX|1|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.1.1|5|{code}^{unit or ''}^MDC|||||R"
    text = hl7(pid("42^^^CH_NORD^PI"), "OBR|1|||P^P^L|||20240316", obx, trigger="ORU^R01")
    from_hl7 = map_hl7(text, HL7_CTX, OPTIONS)[0].record["value_quantity"]
    assert (from_fhir["unit"], from_fhir["unit_system"]) == (from_hl7["unit"], from_hl7["unit_system"])
    assert (from_fhir["unit"], from_fhir["unit_system"]) == (ucum, "http://unitsofmeasure.org")
