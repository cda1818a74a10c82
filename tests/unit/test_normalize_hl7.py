"""HL7 v2 → canonical events: golden cases, every rejection rule, determinism, robustness to Z-segments.

The golden files under tests/golden/hl7 are the specification: each .json was written field by field
from its .hl7 and reviewed by eye. A change of mapping shows up here as a diff to review, never as a
silent drift.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from formats.clinical.identity import ins_key
from schemas.catalog import CANONICAL_TOPICS
from streams.normalize.envelope import RawContext
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, MappingError, Rejection, run_mapper
from tests.support.golden import (
    avro_roundtrip,
    dropped_jsonable,
    expected,
    expected_dropped,
    hl7_cases,
    hl7_context,
    hl7_text,
    schema_errors,
    to_jsonable,
)

OPTIONS = MappingOptions()
CTX = RawContext(
    "raw-1", "hl7v2", "mllp", "CHU_EXEMPLE", "SIH_PASTEL", "MSG1", datetime(2024, 9, 30, tzinfo=UTC)
)

# Values planted in messages that must never come back in a rejection (names, ids, dates).
CANARY_NAME = "ZORGLUBIEN"
CANARY_IPP = "IPP99887766"
CANARY_DATE = "19991231"
INS_OK = f"2850375123456{ins_key('2850375123456'):02d}"
INS_BAD_KEY = "285037512345600"


def golden(case: str) -> list[CanonicalEvent]:
    text = hl7_text(case)
    return map_hl7(text, hl7_context(case, text), OPTIONS)


# --- golden cases --------------------------------------------------------------------------------------


def test_the_golden_set_covers_the_required_cases() -> None:
    required = {
        "adt_a01_ins_qualified",
        "adt_a01_insc_only",
        "adt_a02_summer_time",
        "adt_a03_winter_time",
        "adt_a04_custom_delimiters",
        "adt_a05_preadmit",
        "adt_a06_outpatient_to_inpatient",
        "adt_a08_update_escapes",
        "adt_a11_cancel_admit",
        "adt_a13_cancel_discharge",
        "adt_a28_add_person",
        "adt_a31_latin1_death",
        "adt_a40_merge",
        "oru_r01_lab",
        "oru_r01_latin1_text",
        "oru_r01_pcd01",
        "oru_r01_pcd01_tree",
        "adt_a04_no_authority_ch_nord",
        "adt_a04_no_authority_ch_sud",
        "adt_a01_no_visit_partial",
        "adt_a31_bad_ins_key_kept",
    }
    assert required <= set(hl7_cases())


@pytest.mark.parametrize("case", hl7_cases())
def test_golden(case: str) -> None:
    assert to_jsonable(golden(case)) == expected(case)


@pytest.mark.parametrize("case", hl7_cases())
def test_golden_parts_left_out(case: str) -> None:
    """A partial mapping is part of the specification: what is left out, and why (<case>.dropped.json)."""
    assert dropped_jsonable(golden(case).dropped) == expected_dropped(case)


@pytest.mark.parametrize("case", hl7_cases())
def test_golden_records_fit_their_canonical_schema_exactly(case: str) -> None:
    for event in golden(case):
        assert f"canonical.{event.kind}" in CANONICAL_TOPICS
        assert schema_errors(event.kind, event.record) == []
        assert avro_roundtrip(event.kind, event.record) == event.record
        assert event.key == event.record["patient"]["key"]


@pytest.mark.parametrize("case", hl7_cases())
def test_golden_inputs_are_real_interface_bytes(case: str) -> None:
    from tests.support.golden import GOLDEN_HL7

    raw = (GOLDEN_HL7 / f"{case}.hl7").read_bytes()
    assert b"\n" not in raw and raw.endswith(b"\r")
    if b"|8859/1|" in raw:
        assert any(byte >= 0x80 for byte in raw)
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    else:
        raw.decode("utf-8")


def test_event_ids_follow_the_envelope_rule() -> None:
    """event_id = sha256('<protocol>|<facility>|<application>|<message id>|<event_type>@<locator>')."""

    def expected_id(index: str) -> str:
        return hashlib.sha256(f"hl7v2|CHU_EXEMPLE|SIL_LABO|LAB20240316000042|{index}".encode()).hexdigest()

    events = golden("oru_r01_lab")
    assert events[0].event_id == expected_id("observation.recorded@OBR[1]/OBX[1]")
    assert events[5].event_id == expected_id("observation.cancelled@OBR[1]/OBX[6]")
    assert events[-1].event_id == expected_id("diagnostic_report.issued@OBR[1]")
    adt = golden("adt_a01_ins_qualified")
    assert (
        adt[0].event_id
        == hashlib.sha256(b"hl7v2|CHU_EXEMPLE|SIH_PASTEL|ADT20240315000001|patient.updated@PID").hexdigest()
    )


@pytest.mark.parametrize("case", hl7_cases())
def test_event_ids_are_unique_and_reports_list_their_results(case: str) -> None:
    events = golden(case)
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)
    for report in (e for e in events if e.kind == "diagnostic_report"):
        observations = {e.event_id for e in events if e.kind == "observation"}
        assert set(report.record["result_event_ids"]) <= observations


# --- hand-checked facts (independent of the golden files) ---------------------------------------------


def test_times_without_offset_are_paris_time_with_dst() -> None:
    summer = golden("adt_a02_summer_time")[1].record  # 2024-07-18 10:00 CEST
    winter = golden("adt_a03_winter_time")[1].record  # 2024-01-19 14:30 CET
    assert summer["movement"]["time"] == datetime(2024, 7, 18, 8, 0, tzinfo=UTC)
    assert winter["period_end"] == datetime(2024, 1, 19, 13, 30, tzinfo=UTC)
    explicit = golden("adt_a01_ins_qualified")[1].record  # 20240315080000+0100
    assert explicit["period_start"] == datetime(2024, 3, 15, 7, 0, tzinfo=UTC)


def test_the_hospital_time_zone_is_an_option() -> None:
    text = hl7_text("adt_a02_summer_time")
    events = map_hl7(text, CTX, MappingOptions(timezone=ZoneInfo("America/Cayenne")))  # UTC-3, no DST
    assert events[1].record["movement"]["time"] == datetime(2024, 7, 18, 13, 0, tzinfo=UTC)


def test_ins_is_kept_only_with_a_recognised_oid_and_qualifies_only_with_qual() -> None:
    qualified = golden("adt_a01_ins_qualified")[0].record["patient"]
    assert qualified["ins"] == {"matricule": "285037512345688", "oid": "1.2.250.1.213.1.4.8", "kind": "NIR"}
    assert qualified["ins_qualified"] is True
    assert golden("adt_a02_summer_time")[0].record["patient"]["ins_qualified"] is False  # VALI
    insc = golden("adt_a01_insc_only")[0]
    assert insc.record["patient"]["ins"] is None
    assert insc.key == "0012300300@1.2.250.1.71.4.2.7"


def test_merge_emits_survivor_retired_identity_and_retraction() -> None:
    survivor, retired, retraction = golden("adt_a40_merge")
    assert (survivor.kind, retired.kind, retraction.kind) == ("patient", "patient", "retraction")
    assert retired.key == "0012340099@1.2.250.1.71.4.2.7"
    assert retired.record["merged_into"] == survivor.key == retraction.key
    assert retraction.record["kind"] == "MERGE"
    assert retraction.record["retired_patient"]["key"] == retired.key


def test_lab_values_comparators_ranges_and_flags() -> None:
    events = {e.record["code"]["code"]: e.record for e in golden("oru_r01_lab") if e.kind == "observation"}
    potassium = events["2823-3"]  # local code first, LOINC alternate, French decimal comma
    assert potassium["code"]["local"] is False
    assert potassium["additional_codings"] == [{"system": "L", "code": "K", "display": "Potassium"}]
    assert potassium["value_quantity"]["value"] == 5.8
    assert potassium["reference_range"] == {"low": 3.5, "high": 5.1, "text": "3.5-5.1"}
    crp = events["1988-5"]  # SN "<^5"
    assert (crp["value_quantity"]["comparator"], crp["value_quantity"]["value"]) == ("<", 5.0)
    assert crp["reference_range"] == {"low": None, "high": 5.0, "text": "<5"}
    assert [c["code"] for c in events["5196-1"]["interpretation"]] == ["A", "H"]
    assert events["5199-5"]["value_string"] == "Résultat | à contrôler ^ avis \\ biologiste"
    platelets = events["777-3"]  # OBX-11 X: emitted, cancelled
    assert (platelets["status"], platelets["data_absent_reason"]) == ("cancelled", "not-performed")
    assert events["2345-7"]["data_absent_reason"] == "unknown"
    assert events["TITRE_RUB"]["code"]["local"] is True


def test_pcd01_containment_rows_give_their_device_to_the_metrics() -> None:
    events = golden("oru_r01_pcd01")
    observations = [e.record for e in events if e.kind == "observation"]
    assert [o["code"]["code"] for o in observations] == ["150456", "149530"]
    assert observations[1]["device"] == {
        "id": "0123456789ABCDEF",
        "id_system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680",  # IHE PCD EUI-64, as FHIR sources
        "model": None,
        "manufacturer": None,
        "hierarchy": "1.1.1.2",
    }
    assert observations[0]["value_quantity"]["unit"] == "%"
    assert observations[0]["category"] == "device"


# --- message builders for targeted tests ---------------------------------------------------------------

PID_FIELDS = {
    1: "1",
    3: f"{INS_OK}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS~{CANARY_IPP}^^^CHU&1.2.250.1.71.4.2.7&ISO^PI",
    5: f"{CANARY_NAME}^Jean^^^^^L",
    7: CANARY_DATE,
    8: "M",
    32: "QUAL",
}


def seg(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(i, "") for i in range(1, max(fields, default=0) + 1))


def adt(
    trigger: str = "A01", *, pid: dict[int, str] | None = None, extra: tuple[str, ...] = (), **over: str
) -> str:
    segments = [
        f"MSH|^~\\&|PAS|CHU|AFF|X|20240315083012||ADT^{trigger}|C1|P|2.5",
        over.get("evn", seg("EVN", {2: "20240315083000", 6: "20240315080000"})),
        seg("PID", pid if pid is not None else PID_FIELDS),
        over.get(
            "pv1", seg("PV1", {1: "1", 2: "I", 3: "CARDIO^12^1", 19: "VN1^^^CHU", 44: "20240315080000"})
        ),
        over.get("zbe", seg("ZBE", {1: "MVT1^CHU", 2: "20240315080000", 4: "INSERT", 5: "N"})),
        *extra,
    ]
    return "\r".join(s for s in segments if s) + "\r"


def oru(
    *obx: str, pid: dict[int, str] | None = None, obr: str | None = None, before: tuple[str, ...] = ()
) -> str:
    segments = [
        "MSH|^~\\&|LIS|CHU|AFF|X|20240316071522||ORU^R01^ORU_R01|L1|P|2.5",
        *before,
        seg("PID", pid if pid is not None else PID_FIELDS),
        obr or seg("OBR", {1: "1", 4: "PANEL^Panel^L", 7: "20240316063000", 25: "F"}),
        *(obx or (seg("OBX", {1: "1", 2: "NM", 3: "2160-0^Créatinine^LN", 5: "78", 6: "umol/L", 11: "F"}),)),
    ]
    return "\r".join(segments) + "\r"


def rejection(text: str, options: MappingOptions = OPTIONS) -> Rejection:
    outcome = run_mapper(map_hl7, text, CTX, options)
    assert isinstance(outcome, Rejection), outcome
    assert CANARY_NAME not in outcome.reason and CANARY_IPP not in outcome.reason
    assert CANARY_DATE not in outcome.reason and INS_OK not in outcome.reason
    assert CANARY_NAME not in outcome.location and CANARY_IPP not in outcome.location
    return outcome


# --- rejections: one per rule ---------------------------------------------------------------------------


def test_builders_make_valid_messages() -> None:
    assert [e.kind for e in map_hl7(adt(), CTX, OPTIONS)] == ["patient", "encounter"]
    assert [e.kind for e in map_hl7(oru(), CTX, OPTIONS)] == ["observation", "diagnostic_report"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "PID|1||x",
        f"MSH|^~\\&|PAS\rP!D|{CANARY_NAME}",
        "MSH|^^^^",
    ],
)
def test_unparsable(text: str) -> None:
    assert rejection(text).reason_code == "unparsable"


@pytest.mark.parametrize(
    "message_type", ["ADT^A09", "ADT^A38", "ORU^R30", "ACK^A01", "SIU^S12", "ADT", "ORU"]
)
def test_unsupported_event(message_type: str) -> None:
    text = adt().replace("ADT^A01", message_type, 1)
    outcome = rejection(text)
    assert (outcome.reason_code, outcome.location) == ("unsupported_event", "MSH-9")


def test_adt_trigger_may_come_from_evn_1() -> None:
    text = adt(evn=seg("EVN", {1: "A01", 2: "20240315083000"})).replace("ADT^A01", "ADT", 1)
    assert [e.kind for e in map_hl7(text, CTX, OPTIONS)] == ["patient", "encounter"]


@pytest.mark.parametrize(
    "text",
    [
        adt(pid={}).replace("PID|\r", ""),  # no PID at all
        adt(pid={**PID_FIELDS, 3: f"{INS_OK}^^^ASIP&1.2.250.1.213.1.4.8&ISO^INS"}),  # INS but no IPP
        adt(pid={**PID_FIELDS, 3: ""}),
        oru(pid={**PID_FIELDS, 3: "^^^CHU^PI"}),
        "MSH|^~\\&|LIS|CHU|AFF|X|20240316||ORU^R01|L1|P|2.5\rOBX|1|NM|X^Y^LN||1\r",  # results before PID
        "MSH|^~\\&|LIS|CHU|AFF|X|20240316||ORU^R01|L1|P|2.5\rOBR|1|||P^P^L\r",
        "MSH|^~\\&|LIS|CHU|AFF|X|20240316||ORU^R01|L1|P|2.5\r",
    ],
)
def test_no_patient(text: str) -> None:
    outcome = rejection(text)
    assert (outcome.reason_code, outcome.location) == ("no_patient", "PID-3")


def test_bad_ins_key_without_an_ipp_is_rejected_with_the_identity_rule_code() -> None:
    pid = {**PID_FIELDS, 3: f"{INS_BAD_KEY}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"}
    for text in (adt(pid=pid), oru(pid=pid)):
        outcome = rejection(text)
        assert (outcome.reason_code, outcome.location) == ("bad_ins_key", "PID-3")
        assert INS_BAD_KEY not in outcome.reason


def test_bad_ins_key_next_to_an_ipp_drops_the_ins_only() -> None:
    pid = {**PID_FIELDS, 3: PID_FIELDS[3].replace(INS_OK, INS_BAD_KEY)}
    for text in (adt(pid=pid), oru(pid=pid)):
        outcome = run_mapper(map_hl7, text, CTX, OPTIONS)
        assert isinstance(outcome, list) and outcome
        assert outcome[0].record["patient"]["ins"] is None
        assert [(r.reason_code, r.location) for r in outcome.dropped] == [("bad_ins_key", "PID-3")]
        assert INS_BAD_KEY not in outcome.dropped[0].reason


def test_thirteen_digit_ins_without_key_is_rejected() -> None:
    pid = {**PID_FIELDS, 3: f"{INS_OK[:13]}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS"}
    assert rejection(adt(pid=pid)).reason_code == "bad_ins_key"


def test_ins_c_and_hospital_oids_typed_ins_are_never_an_ins() -> None:
    ids = f"{INS_BAD_KEY}^^^INS-C&1.2.250.1.213.1.4.2&ISO^INS-C~{CANARY_IPP}^^^CHU&1.2.250.1.71.4.2.7&ISO^PI"
    event = map_hl7(adt(pid={**PID_FIELDS, 3: ids}), CTX, OPTIONS)[0]
    assert event.record["patient"]["ins"] is None and event.record["patient"]["ins_qualified"] is False


@pytest.mark.parametrize(
    ("text", "location"),
    [
        (adt(pid={**PID_FIELDS, 7: "19991340"}), "PID-7"),
        (adt(pid={**PID_FIELDS, 29: "2024-01-01"}), "PID-29"),
        (adt(evn=seg("EVN", {2: "20240315083000", 6: "2024031508300"})), "EVN-6"),
        (adt(evn=seg("EVN", {2: "yesterday"})), "EVN-2"),
        (adt(zbe=seg("ZBE", {1: "M1", 2: "20241301", 4: "INSERT"})), "ZBE-2"),
        (adt(pv1=seg("PV1", {2: "I", 19: "VN1", 44: "20240315250000"})), "PV1-44"),
        (adt(pv1=seg("PV1", {2: "I", 19: "VN1", 45: "2024031508+2500"})), "PV1-45"),
        (
            oru(
                seg("OBX", {1: "1", 2: "NM", 3: "A^A^LN", 5: "1", 11: "F", 14: "20240316"}),
                seg("OBX", {1: "2", 2: "NM", 3: "B^B^LN", 5: "1", 11: "F", 14: f"{CANARY_DATE}99"}),
            ),
            "OBX(2)-14",
        ),
        (oru(obr=seg("OBR", {1: "1", 4: "P^P^L", 7: "2024-03-16"})), "OBR(1)-7"),
        (oru(obr=seg("OBR", {1: "1", 4: "P^P^L", 22: "20240230"})), "OBR(1)-22"),
        (oru(seg("OBX", {1: "1", 2: "TS", 3: "A^A^LN", 5: "soon", 11: "F"})), "OBX(1)-5"),
        (oru(seg("OBX", {1: "1", 2: "DT", 3: "A^A^LN", 5: "20241301", 11: "F"})), "OBX(1)-5"),
    ],
)
def test_bad_time(text: str, location: str) -> None:
    outcome = rejection(text)
    assert (outcome.reason_code, outcome.location) == ("bad_time", location)


@pytest.mark.parametrize(
    "trigger", ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A11", "A12", "A13", "Z99"]
)
def test_a_movement_needs_a_visit_number(trigger: str) -> None:
    """The movement is dead-lettered, the patient is not: a partial mapping."""
    outcome = run_mapper(map_hl7, adt(trigger, pv1=seg("PV1", {1: "1", 2: "I", 3: "CARDIO"})), CTX, OPTIONS)
    assert isinstance(outcome, list) and [e.kind for e in outcome] == ["patient"]
    assert [(r.reason_code, r.location) for r in outcome.dropped] == [("no_visit", "PV1-19")]


def test_results_and_reports_need_a_code() -> None:
    outcome = rejection(
        oru(
            seg("OBX", {1: "1", 2: "NM", 3: "A^A^LN", 5: "1", 11: "F"}),
            seg("OBX", {1: "2", 2: "ST", 3: f"^{CANARY_NAME}", 5: "x", 11: "F"}),
        )
    )
    assert (outcome.reason_code, outcome.location) == ("no_code", "OBX(2)-3")
    outcome = rejection(oru(obr=seg("OBR", {1: "1", 4: "", 7: "20240316"})))
    assert (outcome.reason_code, outcome.location) == ("no_code", "OBR(1)-4")


def test_a_merge_needs_the_retired_identity() -> None:
    outcome = rejection(adt("A40", pv1="", zbe=""))
    assert (outcome.reason_code, outcome.location) == ("no_merged_patient", "MRG-1")
    outcome = rejection(adt("A40", pv1="", zbe="", extra=(seg("MRG", {1: "^^^CHU^PI"}),)))
    assert (outcome.reason_code, outcome.location) == ("no_patient", "MRG-1")
    bad = seg("MRG", {1: f"{INS_BAD_KEY}^^^ASIP&1.2.250.1.213.1.4.8&ISO^INS"})
    outcome = rejection(adt("A40", pv1="", zbe="", extra=(bad,)))
    assert (outcome.reason_code, outcome.location) == ("bad_ins_key", "MRG-1")


def test_mapping_error_is_what_map_hl7_raises() -> None:
    with pytest.raises(MappingError) as info:
        map_hl7(adt("A09"), CTX, OPTIONS)
    assert info.value.code == "unsupported_event"


# --- determinism -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", hl7_cases())
def test_same_input_same_events(case: str) -> None:
    text = hl7_text(case)
    first = map_hl7(text, hl7_context(case, text), OPTIONS)
    again = map_hl7(text, hl7_context(case, text), OPTIONS)
    assert to_jsonable(first) == to_jsonable(again)
    # A replay read from another offset (or re-ingested) describes the same events: same ids.
    replay = map_hl7(text, hl7_context(case, text, offset=9999), OPTIONS)
    assert [e.event_id for e in replay] == [e.event_id for e in first]


def test_another_message_id_gives_other_event_ids() -> None:
    text = hl7_text("oru_r01_lab")
    ctx = hl7_context("oru_r01_lab", text)
    other = replace(ctx, message_id="LAB20240316000043")
    ids = {e.event_id for e in map_hl7(text, ctx, OPTIONS)}
    assert ids.isdisjoint(e.event_id for e in map_hl7(text, other, OPTIONS))


def test_records_do_not_depend_on_previous_messages() -> None:
    """Caches (times, offsets) must never leak one message's values into another's records."""
    cases = hl7_cases()
    alone = {case: to_jsonable(golden(case)) for case in cases}
    for case in reversed(cases):
        assert to_jsonable(golden(case)) == alone[case]


# --- robustness: Z-segments, unknown segments, missing optional parts ------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ("ZFD|||Y|N|INSI|20240315|CNI|20310101",),
        ("ZFP|1|33", "ZFV|0690000000^20240301", "ZFM|8|||8"),
        (f"ZZZ|{CANARY_NAME}^^^&&&~~~|\\X00\\|\\Zunknown\\|" + "|" * 300,),
        # (DG1 and PR1 are mapped now, see test_hl7_diagnoses.py; GT1 is a segment the hub ignores)
        ("AL1|1||^PENICILLINE", "GT1|1||GARANT^Fictif", "IN1|1|", "OBX|1|ST|X^Y^L||z"),
        ("ZBE|",),
        ("ZBE|MVT2|not a time|||||",),  # a second ZBE: only the first one describes the movement
        ("Z01", "ZA1|", "NTE|1||note"),
    ],
)
def test_z_segments_and_unknown_segments_never_break_a_mapping(extra: tuple[str, ...]) -> None:
    base = to_jsonable(map_hl7(adt(), CTX, OPTIONS))
    assert to_jsonable(map_hl7(adt(extra=extra), CTX, OPTIONS)) == base
    if not any(s.startswith(("OBX", "NTE")) for s in extra):
        results = oru()
        for at in ("\rOBR", "\rOBX"):  # before the order, and inside it
            text = results.replace(at, "\r" + "\r".join(extra) + at, 1)
            assert to_jsonable(map_hl7(text, CTX, OPTIONS)) == to_jsonable(map_hl7(results, CTX, OPTIONS))


def test_zbe_is_optional() -> None:
    events = map_hl7(adt("A03", zbe=""), CTX, OPTIONS)
    movement = events[1].record["movement"]
    assert movement["movement_id"] is None and movement["action"] == "INSERT"
    assert movement["time"] == datetime(2024, 3, 15, 7, 0, tzinfo=UTC)  # EVN-6 when ZBE-2 is absent
    assert events[1].record["status"] == "finished"


def test_cancellations_are_cancel_movements_whatever_zbe_4_says() -> None:
    for trigger, original in (("A11", None), ("A12", "A02"), ("A13", "A03")):
        record = map_hl7(adt(trigger), CTX, OPTIONS)[1].record
        assert record["movement"]["action"] == "CANCEL"
        assert record["movement"]["original_trigger"] == original


def test_a08_maps_the_encounter_only_when_pv1_names_a_visit() -> None:
    assert [e.kind for e in map_hl7(adt("A08", pv1="", zbe=""), CTX, OPTIONS)] == ["patient"]
    events = map_hl7(adt("A08"), CTX, OPTIONS)
    assert [e.kind for e in events] == ["patient", "encounter"]
    assert events[1].record["movement"] is None


@pytest.mark.parametrize("trigger", ["A28", "A31"])
def test_person_messages_map_the_patient_only(trigger: str) -> None:
    events = map_hl7(adt(trigger), CTX, OPTIONS)
    assert [e.kind for e in events] == ["patient"]
    assert events[0].record["envelope"]["event_type"] == (
        "patient.registered" if trigger == "A28" else "patient.updated"
    )


def test_historic_movement_does_not_claim_the_current_status() -> None:
    zbe = seg("ZBE", {1: "M1", 2: "20240315080000", 4: "INSERT", 5: "Y"})
    assert map_hl7(adt("A02", zbe=zbe), CTX, OPTIONS)[1].record["status"] == "in-progress"  # from PV1-44
    pv1 = seg("PV1", {1: "1", 2: "I", 19: "VN1"})
    assert map_hl7(adt("A02", zbe=zbe, pv1=pv1), CTX, OPTIONS)[1].record["status"] == "unknown"


def test_units_are_converted_with_their_reference_range_when_the_options_say_so() -> None:
    obx = seg("OBX", {1: "1", 2: "NM", 3: "29463-7^Poids^LN", 5: "154", 6: "lb", 7: "110-220", 11: "F"})
    record = map_hl7(oru(obx), CTX, OPTIONS)[0].record
    quantity = record["value_quantity"]
    assert (quantity["unit"], quantity["original_unit"], round(quantity["value"], 3)) == ("kg", "lb", 69.853)
    assert (round(record["reference_range"]["low"], 2), round(record["reference_range"]["high"], 2)) == (
        49.9,
        99.79,
    )
    assert record["category"] == "vital-signs"
    kept = map_hl7(oru(obx), CTX, MappingOptions(unit_conversions={}))[0].record
    assert (kept["value_quantity"]["unit"], kept["reference_range"]["low"]) == ("[lb_av]", 110.0)


def test_unknown_units_are_kept_and_declared_ucum_units_trusted() -> None:
    odd = seg("OBX", {1: "1", 2: "NM", 3: "A^A^LN", 5: "3", 6: "bidules", 11: "F"})
    ucum = seg("OBX", {1: "2", 2: "NM", 3: "B^B^LN", 5: "3", 6: "mg/(24.h)^^UCUM", 11: "F"})
    first, second = (e.record["value_quantity"] for e in map_hl7(oru(odd, ucum), CTX, OPTIONS)[:2])
    assert (first["unit"], first["unit_system"]) == ("bidules", None)
    assert (second["unit"], second["unit_system"]) == ("mg/(24.h)", "http://unitsofmeasure.org")


@pytest.mark.parametrize(
    ("value_type", "value", "slot", "expected_value"),
    [
        ("NM", "négatif", "value_string", "négatif"),
        ("NM", ">=10", "value_quantity", 10.0),
        ("NM", "nan", "value_string", "nan"),
        ("SN", "^10^-^20", "value_string", "10-20"),
        ("SN", "=^4", "value_quantity", 4.0),
        ("CWE", "^Texte seul", "value_string", "Texte seul"),
        ("DT", "202403", "value_string", "2024-03"),
        ("TS", "20240316101500", "value_string", "2024-03-16T09:15:00+00:00"),
        ("TS", "20240316", "value_string", "2024-03-16"),
        ("TX", "a~~b", "value_string", "a\n\nb"),
        ("ED", "^application^pdf^Base64^JVBERi0=", "data_absent_reason", "unsupported"),
        ("", "texte", "value_string", "texte"),
        ("XYZ", "x^y", "value_string", "x^y"),
    ],
)
def test_value_types(value_type: str, value: str, slot: str, expected_value: object) -> None:
    obx = seg("OBX", {1: "1", 2: value_type, 3: "A^A^LN", 5: value, 11: "F"})
    record = map_hl7(oru(obx), CTX, OPTIONS)[0].record
    got = record[slot]["value"] if slot == "value_quantity" else record[slot]
    assert got == expected_value
    assert schema_errors("observation", record) == []


def test_date_only_time_values_stay_dates_in_the_hospital_zone() -> None:
    obx = seg("OBX", {1: "1", 2: "TS", 3: "A^A^LN", 5: "20240316", 11: "F"})
    for zone in ("Europe/Paris", "Pacific/Auckland", "America/Cayenne"):
        record = map_hl7(oru(obx), CTX, MappingOptions(timezone=ZoneInfo(zone)))[0].record
        assert record["value_string"] == "2024-03-16"


def test_code_systems_come_from_the_options() -> None:
    obx = seg("OBX", {1: "1", 2: "NM", 3: "GLU^Glucose^99LAB", 5: "5", 11: "F"})
    local = map_hl7(oru(obx), CTX, OPTIONS)[0].record["code"]
    assert (local["system"], local["local"]) == ("99LAB", True)
    options = MappingOptions(code_systems={"99LAB": "urn:oid:1.2.250.1.71.4.2.7.99"})
    known = map_hl7(oru(obx), CTX, options)[0].record["code"]
    assert (known["system"], known["local"]) == ("urn:oid:1.2.250.1.71.4.2.7.99", False)


def test_observations_before_any_obr_are_kept_without_report() -> None:
    text = "\r".join(
        [
            "MSH|^~\\&|LIS|CHU|AFF|X|20240316||ORU^R01|L1|P|2.5",
            seg("PID", PID_FIELDS),
            seg("OBX", {1: "1", 2: "NM", 3: "A^A^LN", 5: "1", 11: "F"}),
        ]
    )
    events = map_hl7(text, CTX, OPTIONS)
    assert [e.kind for e in events] == ["observation"]
    assert events[0].record["envelope"]["event_type"] == "observation.recorded"


def test_several_orders_and_patients_in_one_results_message() -> None:
    other = {**PID_FIELDS, 3: "IPP2^^^CHU&1.2.250.1.71.4.2.7&ISO^PI", 32: ""}
    text = oru(
        seg("OBX", {1: "1", 2: "NM", 3: "A^A^LN", 5: "1", 11: "F"}),
        seg("OBR", {1: "2", 4: "P2^P2^L", 7: "20240316"}),
        seg("OBX", {1: "1", 2: "NM", 3: "B^B^LN", 5: "2", 11: "F"}),
        seg("PID", other),
        seg("OBR", {1: "1", 4: "P3^P3^L", 7: "20240316"}),
        seg("OBX", {1: "1", 2: "NM", 3: "C^C^LN", 5: "3", 11: "F"}),
    )
    events = map_hl7(text, CTX, OPTIONS)
    assert [e.kind for e in events] == ["observation", "diagnostic_report"] * 3
    assert [e.key for e in events][-2:] == ["IPP2@1.2.250.1.71.4.2.7"] * 2
    assert events[3].record["result_event_ids"] == [events[2].event_id]
