"""Issue #19, first bullet: HL7 v2 DG1 → canonical Condition, PR1 → canonical Procedure, in ADT and BAR.

The golden files (tests/golden/hl7/adt_*dg1*, bar_*) are the specification and run with every other
HL7 golden in test_normalize_hl7.py; this file adds the oracle (hl7apy reads the same DG1/PR1 fields and
the same BAR account groups), the door (BAR^P01 answered AA and stored), the partial mappings through
the stage, the national policies, and the rules one by one. Every patient here is fictitious.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from prometheus_client import CollectorRegistry

from affluent.core.settings import MllpSettings
from connectors.mllp.intake import Accepted, IntakePolicy, Rejected, assess
from formats.clinical.codes import CCAM, CIM10, ICDO3
from formats.clinical.pmsi import (
    ccam_code,
    cim10_code,
    is_ccam_system,
    is_cim10_system,
    is_icdo3_system,
    pmsi_role,
)
from formats.clinical.times import PARIS, parse_hl7_ts
from formats.hl7.coverage import MAPPED
from formats.reasons import ReasonCode
from schemas.registry import decode, load_schema, parse_schema
from streams.normalize.envelope import RawContext
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, Mapped, MappingError, run_mapper
from streams.normalize.stage import NormalizeMetrics, Normalizer
from streams.pseudonymize import Feed, load_policy
from tests.support.canonical_samples import load_test_keys
from tests.support.golden import GOLDEN_HL7, hl7_context, hl7_text

OPTIONS = MappingOptions()
CTX = RawContext("raw-1", "hl7v2", "mllp", "CHU_EXEMPLE", "PMSI", "MSG1", datetime(2024, 9, 30, tzinfo=UTC))
CASES = [
    "adt_a01_dg1_cancer",
    "adt_a03_dg1_pr1_ccam",
    "adt_a08_dg1_empty_code_partial",
    "bar_p01_add_accounts",
    "bar_p05_update_account",
    "bar_p12_update_diagnoses",
    "bar_p12_bad_codes_partial",
]
# Goldens that are valid HL7 v2.5 (hl7apy STRICT); the last one breaks rules on purpose.
VALID_V25 = CASES[:-1]
CANARY = "ZORGLUBIEN"  # a name or code that must never come back in a reason or a national record
AUTH = "CHU_EXEMPLE&1.2.250.1.71.4.2.7&ISO"


def golden(case: str) -> Mapped:
    text = hl7_text(case)
    return map_hl7(text, hl7_context(case, text), OPTIONS)


def coded(events: list[CanonicalEvent]) -> list[CanonicalEvent]:
    return [e for e in events if e.kind in ("condition", "procedure")]


def message(mtype: str, *segments: str) -> str:
    head = f"MSH|^~\\&|PMSI|CHU_EXEMPLE|AFF|X|20240612090000||{mtype}|C1|P|2.5"
    body = [
        head,
        "EVN||20240612090000",
        f"PID|1||0012345678^^^{AUTH}^PI||TEST^Patient||19800101|M",
        *segments,
    ]
    return "\r".join(body) + "\r"


PV1 = f"PV1|1|I|||||||||||||||||VN1^^^{AUTH}^VN"


def dg1(code: str, **fields: str) -> str:
    values = {3: code, **{int(k[1:]): v for k, v in fields.items()}}
    return "DG1|" + "|".join(values.get(i, "") for i in range(1, max(values) + 1))


def pr1(code: str, **fields: str) -> str:
    values = {3: code, **{int(k[1:]): v for k, v in fields.items()}}
    return "PR1|" + "|".join(values.get(i, "") for i in range(1, max(values) + 1))


def mapped(text: str, options: MappingOptions = OPTIONS) -> Mapped:
    outcome = run_mapper(map_hl7, text, CTX, options)
    assert isinstance(outcome, Mapped), outcome
    return outcome


# --- the golden set ------------------------------------------------------------------------------------


def test_the_golden_set_covers_the_coded_stay_cases() -> None:
    assert {f"{case}.hl7" for case in CASES} <= {p.name for p in GOLDEN_HL7.glob("*.hl7")}
    assert (GOLDEN_HL7 / "adt_a08_dg1_empty_code_partial.dropped.json").exists()
    assert (GOLDEN_HL7 / "bar_p12_bad_codes_partial.dropped.json").exists()


def test_the_goldens_say_what_the_issue_asks() -> None:
    cancer = coded(golden("adt_a01_dg1_cancer"))
    assert [(e.record["code"]["code"], e.record["diagnosis_role"]) for e in cancer] == [
        ("C34.1", "DP"),  # sent as C341, principal by priority 1
        ("J44.9", "DAS"),
    ]
    assert cancer[0].record["tumour"]["morphology"]["code"] == "8140/3"
    assert {e.record["code"]["system"] for e in cancer} == {CIM10}
    stay = coded(golden("adt_a03_dg1_pr1_ccam"))
    assert [e.kind for e in stay] == ["condition", "condition", "procedure", "procedure"]
    assert [(e.record["activity"], e.record["phase"]) for e in stay[2:]] == [("1", "0"), (None, None)]
    assert {e.record["code"]["system"] for e in stay[2:]} == {CCAM}
    p12 = golden("bar_p12_update_diagnoses")
    assert [e.record["envelope"]["event_type"] for e in p12] == [
        "patient.updated",
        "condition.recorded",
        "condition.deleted",
        "procedure.updated",
    ]
    assert p12[2].record["verification_status"] == "entered-in-error"


# --- the oracle: hl7apy reads the same segments, fields and account groups -----------------------------


def _segments(node: Any, visit: str | None = None) -> Iterator[tuple[str, dict[str, str], str | None]]:
    """(segment name, HL7 fields as ER7 text, visit number of its group's PV1), in message order, walking
    hl7apy's groups (BAR_P01_VISIT, *_PROCEDURE): the visit comes from hl7apy's structure, not ours."""
    for child in node.children:
        if child.classname == "Group":
            yield from _segments(child, visit)
            continue
        fields = {c.name: c.to_er7() for c in child.children}
        if child.name == "PV1":
            visit = fields.get("PV1_19", "").split("^")[0] or None
        yield child.name, fields, visit


@pytest.mark.parametrize("case", CASES)
def test_oracle_hl7apy_reads_the_same_codes_dates_and_visits(case: str) -> None:
    text = hl7_text(case)
    theirs = parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.TOLERANT)
    dropped = {r.location.split("-")[0] for r in golden(case).dropped}
    expected = []
    counts = {"DG1": 0, "PR1": 0}
    for name, fields, visit in _segments(theirs):
        if name not in counts:
            continue
        counts[name] += 1
        if f"{name}({counts[name]})" in dropped:
            continue
        code, _, system = [*fields.get(f"{name}_3", "").split("^"), "", ""][:3]
        if name == "DG1":
            assert is_cim10_system(system)
            expected.append(("condition", cim10_code(code), fields.get("DG1_5"), visit))
        else:
            assert is_ccam_system(system)
            parsed = ccam_code(code)
            assert parsed is not None
            expected.append(("procedure", parsed[0], fields.get("PR1_5"), visit))
    ours = []
    for event in coded(golden(case)):
        r = event.record
        when = r["recorded_time"] if event.kind == "condition" else r["performed_start"]
        ours.append((event.kind, r["code"]["code"], when, (r["encounter"] or {}).get("visit_number")))
    assert len(ours) == len(expected) > 0
    for (kind, code, when, visit), (their_kind, their_code, their_time, their_visit) in zip(
        ours, expected, strict=True
    ):
        assert (kind, code, visit) == (their_kind, their_code, their_visit)
        assert when == (parse_hl7_ts(their_time, PARIS).instant if their_time else None)


@pytest.mark.parametrize("case", VALID_V25)
def test_the_goldens_are_valid_hl7_v25_messages(case: str) -> None:
    """hl7apy STRICT: each message matches its v2.5 structure (BAR_P01 … BAR_P12) and field types."""
    theirs = parse_message(hl7_text(case), find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    theirs.validate()


def test_a_bar_p01_repeats_its_accounts_and_each_dg1_pr1_belongs_to_its_own() -> None:
    theirs = parse_message(hl7_text("bar_p01_add_accounts"), find_groups=True)
    assert [g.name for g in theirs.children if g.classname == "Group"] == ["BAR_P01_VISIT"] * 2
    visits = [(e.kind, e.record["encounter"]["visit_number"]) for e in coded(golden("bar_p01_add_accounts"))]
    assert visits == [
        ("condition", "VN0000801"),
        ("procedure", "VN0000801"),
        ("procedure", "VN0000801"),
        ("condition", "VN0000802"),
        ("procedure", "VN0000802"),
    ]


# --- event ids ---------------------------------------------------------------------------------------


def test_event_ids_name_the_segment_place() -> None:
    events = golden("bar_p01_add_accounts")

    def expected(index: str) -> str:
        basis = f"hl7v2|CHU_EXEMPLE|PMSI_PASTEL|BAR20240612000201|{index}"
        return hashlib.sha256(basis.encode()).hexdigest()

    assert [e.event_id for e in events] == [
        expected("patient.updated@PID"),
        expected("condition.recorded@DG1[1]"),
        expected("procedure.recorded@PR1[1]"),
        expected("procedure.recorded@PR1[2]"),
        expected("condition.recorded@DG1[2]"),
        expected("procedure.recorded@PR1[3]"),
    ]


def test_a_dropped_segment_does_not_shift_the_others_ids() -> None:
    whole = mapped(message("BAR^P12", PV1, dg1("C341^x^CIM10"), dg1("I10^x^CIM10")))
    partial = mapped(message("BAR^P12", PV1, dg1("^^CIM10"), dg1("I10^x^CIM10")))
    assert whole[2].event_id == partial[1].event_id  # DG1[2] either way


# --- the rules, one by one ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("C341", "C34.1"),
        ("C34.1", "C34.1"),
        (" c34.1 ", "C34.1"),
        ("C34", "C34"),
        ("C34.", "C34"),
        ("Z5101", "Z51.01"),  # ATIH 5th and 6th characters
        ("G63.2*", "G63.2"),  # dual classification mark
        ("E11.9\u2020", "E11.9"),
        ("C34..1", None),
        ("C3.41", None),
        ("34C1", None),
        ("C3", None),
        ("CX41", None),
        ("C34.12345", None),
        ("Ｃ３４", None),  # full-width characters are not a code
        ("", None),
    ],
)
def test_cim10_codes_have_one_form(text: str, code: str | None) -> None:
    assert cim10_code(text) == code


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("HHFA016", ("HHFA016", None, None)),
        ("hhfa016", ("HHFA016", None, None)),
        ("HHFA016-1-0", ("HHFA016", "1", "0")),
        ("HHFA016/4/0", ("HHFA016", "4", "0")),
        ("HHFA016 1 2", ("HHFA016", "1", "2")),
        ("HHFA016_1", ("HHFA016", "1", None)),
        ("HHFA01610", ("HHFA016", "1", "0")),
        ("HHFA0164", ("HHFA016", "4", None)),
        ("HHFA016-1/0", None),  # two different separators
        ("HHFA016-10", None),  # ambiguous: one separator, two digits
        ("HHFA016-0-0", None),  # activity 0 does not exist
        ("HHFA16", None),
        ("HHF0016", None),
        ("HHFA016-1-0-1", None),
        ("", None),
    ],
)
def test_ccam_codes_carry_activity_and_phase(
    text: str, parsed: tuple[str, str | None, str | None] | None
) -> None:
    assert ccam_code(text) == parsed


@pytest.mark.parametrize(
    "name",
    [
        "I10",
        "CIM10",
        "cim-10",
        "ICD-10",
        "2.16.840.1.113883.6.3",
        "urn:oid:2.16.840.1.113883.6.3",
        "1.2.250.1.213.2.67",
        "https://smt.esante.gouv.fr/terminologie-cim-10/",
        "http://hl7.org/fhir/sid/icd-10",
    ],
)
def test_every_cim10_spelling_is_one_system(name: str) -> None:
    text = message("BAR^P12", PV1, dg1(f"C341^x^{name}"))
    assert mapped(text)[1].record["code"] == {"system": CIM10, "code": "C34.1", "display": "x"}


@pytest.mark.parametrize(
    "name",
    [
        "CCAM",
        "1.2.250.1.215.300.1",
        "urn:oid:1.2.250.1.213.2.5",
        "https://smt.esante.gouv.fr/terminologie-ccam",
    ],
)
def test_every_ccam_spelling_is_one_system(name: str) -> None:
    record = mapped(message("BAR^P12", PV1, pr1(f"HHFA016-1-0^x^{name}", s5="20240612")))[1].record
    assert (record["code"]["system"], record["code"]["code"], record["activity"]) == (CCAM, "HHFA016", "1")


def test_system_predicates_refuse_what_they_do_not_name() -> None:
    for name in ("", None, "LN", "CCAM", "I9", "2.16.840.1.113883.6.4"):
        assert not is_cim10_system(name)
    assert not is_ccam_system("C4") and not is_icdo3_system("I10")
    assert is_icdo3_system("ICD-O-3") and is_icdo3_system("urn:oid:2.16.840.1.113883.6.43.1")


def test_a_site_name_configured_in_the_options_is_recognised() -> None:
    options = MappingOptions(code_systems={**OPTIONS.code_systems, "DIAG_FR": CIM10})
    record = mapped(message("BAR^P12", PV1, dg1("C341^x^DIAG_FR")), options)[1].record
    assert record["code"]["code"] == "C34.1"


@pytest.mark.parametrize(
    ("fields", "role"),
    [
        ({"s6": "DP"}, "DP"),
        ({"s6": "dr"}, "DR"),
        ({"s6": "DAS"}, "DAS"),
        ({"s6": "DA"}, "DAS"),
        ({"s6": "DAD"}, "DAD"),
        ({"s6": "F", "s17": "DR"}, "DR"),
        ({"s6": "F", "s21": "DAS"}, "DAS"),
        ({"s6": "F", "s15": "1"}, "DP"),
        ({"s6": "F", "s15": "2"}, None),
        ({"s6": "DAS", "s15": "1"}, "DAS"),  # an explicit role wins over the priority
        ({"s6": "DR", "s17": "DAS", "s21": "DP"}, "DR"),  # DG1-6 first, then DG1-17, then DG1-21
        ({"s17": "DAS", "s21": "DP"}, "DAS"),
        ({"s6": "W"}, None),
    ],
)
def test_the_pmsi_role_is_read_wherever_the_sender_put_it(fields: dict[str, str], role: str | None) -> None:
    record = mapped(message("BAR^P12", PV1, dg1("C341^x^CIM10", **fields)))[1].record
    assert record["diagnosis_role"] == role


def test_pmsi_role_spellings() -> None:
    assert [pmsi_role(t) for t in ("DP", " dp ", "DR", "DAS", "DA", "DASS", "DAD", "A", "")] == [
        "DP",
        "DP",
        "DR",
        "DAS",
        "DAS",
        "DAS",
        "DAD",
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("kind", "action", "status", "event_type"),
    [
        ("A", "", "provisional", "condition.recorded"),
        ("W", "", "provisional", "condition.recorded"),
        ("F", "", "confirmed", "condition.recorded"),
        ("F", "A", "confirmed", "condition.recorded"),
        ("F", "X", "confirmed", "condition.recorded"),
        ("F", "U", "confirmed", "condition.updated"),
        ("F", "D", "entered-in-error", "condition.deleted"),
        ("DP", "", None, "condition.recorded"),
    ],
)
def test_diagnosis_type_and_action_code(kind: str, action: str, status: str | None, event_type: str) -> None:
    record = mapped(message("BAR^P12", PV1, dg1("C341^x^CIM10", s6=kind, s21=action)))[1].record
    assert (record["verification_status"], record["envelope"]["event_type"]) == (status, event_type)


@pytest.mark.parametrize(
    ("action", "status", "event_type"),
    [
        ("", "completed", "procedure.recorded"),
        ("A", "completed", "procedure.recorded"),
        ("U", "completed", "procedure.updated"),
        ("D", "entered-in-error", "procedure.deleted"),
    ],
)
def test_procedure_action_code(action: str, status: str, event_type: str) -> None:
    record = mapped(message("BAR^P12", PV1, pr1("HHFA016^x^CCAM", s5="20240612", s20=action)))[1].record
    assert (record["status"], record["envelope"]["event_type"]) == (status, event_type)


def test_a_standard_alternate_is_preferred_and_the_local_code_kept() -> None:
    text = message(
        "BAR^P12", PV1, dg1("X12^Local^99DIAG^C341^Poumon^CIM10"), pr1("A7^Loc^99ACT^HHFA01610^App^CCAM")
    )
    condition, procedure = mapped(text)[1:]
    assert condition.record["code"] == {"system": CIM10, "code": "C34.1", "display": "Poumon"}
    assert condition.record["additional_codings"] == [{"system": "99DIAG", "code": "X12", "display": "Local"}]
    assert (procedure.record["code"]["code"], procedure.record["activity"], procedure.record["phase"]) == (
        "HHFA016",
        "1",
        "0",
    )
    assert procedure.record["additional_codings"] == [{"system": "99ACT", "code": "A7", "display": "Loc"}]


def test_local_and_unnamed_codes_are_kept_as_sent_without_a_guess() -> None:
    """No system is claimed for a code sent without one (a local code may look like CIM-10)."""
    text = message("BAR^P12", PV1, dg1("C341^x"), dg1("Z-LOCAL^y^99DIAG"), pr1("ACT 12^z", s5="20240612"))
    records = [e.record for e in mapped(text)[1:]]
    assert [r["code"] for r in records] == [
        {"system": None, "code": "C341", "display": "x"},
        {"system": "99DIAG", "code": "Z-LOCAL", "display": "y"},
        {"system": None, "code": "ACT 12", "display": "z"},
    ]
    assert (records[2]["activity"], records[2]["phase"]) == (None, None)


def test_icdo3_alternate_fills_the_tumour() -> None:
    text = message("BAR^P12", PV1, dg1("C341^x^CIM10^C34.1^Lobe supérieur^ICD-O-3"))
    record = mapped(text)[1].record
    assert record["tumour"] == {
        "topography": {"system": ICDO3, "code": "C34.1", "display": "Lobe supérieur"},
        "morphology": None,
        "stage": None,
    }


def test_dates_and_event_time() -> None:
    text = message("BAR^P12", PV1, dg1("C341^x^CIM10", s5="20240601"), dg1("I10^y^CIM10"))
    first, second = (e.record for e in mapped(text)[1:])
    assert first["recorded_time"] == datetime(2024, 5, 31, 22, 0, tzinfo=UTC)  # a Paris date, day precision
    assert first["envelope"]["event_time_precision"] == "day"
    assert first["onset_time"] is None  # DG1 carries no onset (DG1-19 is the attestation time)
    assert second["recorded_time"] is None  # no DG1-5: the message's event time (EVN-2)
    assert second["envelope"]["event_time"] == datetime(2024, 6, 12, 7, 0, tzinfo=UTC)


def test_the_visit_is_the_pv1_before_the_segment() -> None:
    assert mapped(message("BAR^P12", dg1("I10^x^CIM10")))[1].record["encounter"] is None
    assert mapped(message("BAR^P12", "PV1|1|I", dg1("I10^x^CIM10")))[1].record["encounter"] is None
    record = mapped(message("BAR^P12", PV1, dg1("I10^x^CIM10")))[1].record
    assert record["encounter"] == {
        "visit_number": "VN1",
        "authority_name": "CHU_EXEMPLE",
        "authority_oid": "1.2.250.1.71.4.2.7",
    }


def test_procedures_name_the_sending_facility_never_a_person() -> None:
    surgeon = f"10101010101^{CANARY}^Chirurgien"
    text = message(
        "BAR^P12",
        PV1,
        dg1("I10^x^CIM10", s16=surgeon),
        pr1("HHFA016^x^CCAM", s5="20240612", s8=surgeon, s11=surgeon, s12=surgeon),
    )
    events = mapped(text.replace("MSH|^~\\&|PMSI|CHU_EXEMPLE|", "MSH|^~\\&|PMSI|CHU_EXEMPLE^1.2.3^ISO|"))
    assert events[2].record["performer_organization"] == {
        "id": "urn:oid:1.2.3",
        "id_system": "urn:ietf:rfc:3986",
        "name": "CHU_EXEMPLE",
    }
    assert CANARY not in json.dumps([e.record for e in events], default=str)


# --- partial mappings: a DG1 or PR1 costs only itself ------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "reason", "location"),
    [
        (dg1(""), "no_code", "DG1(1)-3"),
        (dg1('""^^CIM10'), "no_code", "DG1(1)-3"),  # the HL7 null
        (dg1(f"{CANARY}^x^CIM10"), "bad_code", "DG1(1)-3"),
        (dg1("C341^x^CIM10", s5=CANARY), "bad_time", "DG1(1)-5"),
        (pr1("^label only^CCAM"), "no_code", "PR1(1)-3"),
        (pr1(f"{CANARY}^x^CCAM"), "bad_code", "PR1(1)-3"),
        (pr1("HHFA016^x^CCAM", s5="2024-06-12"), "bad_time", "PR1(1)-5"),
    ],
)
def test_a_broken_segment_is_left_out_and_the_rest_mapped(segment: str, reason: str, location: str) -> None:
    for mtype in ("ADT^A01", "BAR^P01", "BAR^P12"):
        text = message(mtype, PV1, segment, dg1("I10^Hypertension^CIM10"))
        events = mapped(text)
        assert events[-1].record["code"]["code"] == "I10"  # the next segment goes on
        (left_out,) = events.dropped
        assert (left_out.reason_code, left_out.location) == (reason, location)
        assert CANARY not in left_out.reason and CANARY not in left_out.location


def test_a_message_of_broken_segments_still_gives_its_patient() -> None:
    events = mapped(message("BAR^P12", PV1, dg1(""), pr1("")))
    assert [e.kind for e in events] == ["patient"]
    assert [r.reason_code for r in events.dropped] == [ReasonCode.NO_CODE, ReasonCode.NO_CODE]


def test_the_stage_writes_the_stay_and_dead_letters_the_broken_segments_as_partial() -> None:
    registry = _FakeRegistry()
    metrics = NormalizeMetrics(CollectorRegistry())
    stage = Normalizer(registry, OPTIONS, metrics, {"hl7v2": map_hl7})  # type: ignore[arg-type]
    outputs = stage.process(_raw(registry, "bar_p12_bad_codes_partial", "BAR^P12"), "ingest.hl7v2.raw", 0, 9)
    assert [o.topic for o in outputs] == [
        "canonical.patient",
        "canonical.condition",
        "dlq.normalize",
        "dlq.normalize",
        "dlq.normalize",
    ]
    dead = [decode(registry, o.value) for o in outputs[2:]]  # type: ignore[arg-type]
    assert [(d["reason_code"], d["location"]) for d in dead] == [
        ("bad_code", "DG1(1)-3"),
        ("bad_time", "DG1(2)-5"),
        ("bad_code", "PR1(1)-3"),
    ]
    assert all(
        d["attributes"] == {"message_type": "BAR^P12", "outcome": "partial", "events": "2"} for d in dead
    )
    assert metrics.dead_letters.labels("normalize", "bad_code")._value.get() == 2
    assert metrics.records_out.labels("condition")._value.get() == 1


# --- which messages carry a coded stay ---------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["A01", "A03", "A04", "A06", "A08", "Z99"])
def test_adt_movements_and_updates_map_their_dg1_and_pr1(trigger: str) -> None:
    text = message(f"ADT^{trigger}", PV1, dg1("I10^x^CIM10"), pr1("DEQP003^y^CCAM", s5="20240612"))
    assert [e.kind for e in mapped(text)] == ["patient", "encounter", "condition", "procedure"]


def test_identity_feeds_map_their_dg1_without_a_visit() -> None:
    events = mapped(message("ADT^A31", "PV1|1|N", dg1("I10^x^CIM10")))
    assert [e.kind for e in events] == ["patient", "condition"] and events[1].record["encounter"] is None


@pytest.mark.parametrize("trigger", ["A11", "A12", "A13"])
def test_cancellations_ignore_the_dg1_and_pr1_they_restate(trigger: str) -> None:
    text = message(f"ADT^{trigger}", PV1, dg1("I10^x^CIM10"), pr1("DEQP003^y^CCAM", s5="20240612"))
    assert [e.kind for e in mapped(text)] == ["patient", "encounter"]


def test_a_movement_without_visit_keeps_its_diagnoses() -> None:
    events = mapped(message("ADT^A03", "PV1|1|I", dg1("I10^x^CIM10")))
    assert [e.kind for e in events] == ["patient", "condition"]
    assert [r.reason_code for r in events.dropped] == [ReasonCode.NO_VISIT]


def test_a_bar_without_dg1_or_pr1_is_its_patient() -> None:
    assert [e.kind for e in mapped(message("BAR^P01", PV1))] == ["patient"]


def test_a_bar_without_pid_names_no_patient() -> None:
    text = (
        "MSH|^~\\&|PMSI|CHU_EXEMPLE|AFF|X|20240612090000||BAR^P01|C1|P|2.5\rEVN|P01|20240612\r" + PV1 + "\r"
    )
    with pytest.raises(MappingError) as refused:
        map_hl7(text, CTX, OPTIONS)
    assert refused.value.code == ReasonCode.NO_PATIENT


# --- the door: BAR accepted, answered AA and stored --------------------------------------------------

BAR_EVENTS = [f"P{n:02d}" for n in range(1, 13)] + [""]


@pytest.mark.parametrize("event", BAR_EVENTS, ids=[f"BAR^{e or 'none'}" for e in BAR_EVENTS])
def test_the_door_accepts_exactly_the_bar_events_the_mapper_maps(event: str) -> None:
    text = message(f"BAR^{event}", PV1, dg1("I10^x^CIM10"))
    door = assess(text.encode(), IntakePolicy())
    try:
        map_hl7(text, CTX, OPTIONS)
        mapper_maps = True
    except MappingError as exc:
        assert exc.code == ReasonCode.UNSUPPORTED_EVENT
        mapper_maps = False
    assert isinstance(door, Accepted) == mapper_maps == (event in {"P01", "P05", "P12"})
    if not mapper_maps:
        assert isinstance(door, Rejected) and door.reason_code == ReasonCode.UNSUPPORTED_EVENT


def test_the_door_accepts_every_mapped_type_by_default() -> None:
    assert IntakePolicy().allowed_message_types == frozenset(MAPPED)
    assert set(MllpSettings().allowed_message_types) == set(MAPPED)
    assert "BAR" in MAPPED


@pytest.mark.parametrize(
    "case", ["bar_p01_add_accounts", "bar_p05_update_account", "bar_p12_update_diagnoses"]
)
@pytest.mark.parametrize(
    ("ack_modes", "answer"), [(b"|||", "AA"), (b"|AL|NE|", "CA")], ids=["original", "enhanced"]
)
def test_a_bar_is_answered_aa_after_it_is_stored(case: str, ack_modes: bytes, answer: str) -> None:
    """Original mode (MSH-15/16 empty) gets AA, enhanced mode (AL/NE, as the goldens) a commit CA; both
    only once the raw record is stored."""
    from tests.unit.test_mllp_handler_fuzz import PEER, answers, make_server

    server, producer, dead = make_server()
    payload = (GOLDEN_HL7 / f"{case}.hl7").read_bytes().replace(b"|AL|NE|", ack_modes, 1)
    (ack,) = answers(asyncio.run(server.handle_frame(payload, PEER)))
    control_id = hl7_context(case, hl7_text(case)).message_id
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == (answer, control_id)
    assert [topic for topic, _, _ in producer.sent] == ["ingest.hl7v2.raw", "ack"]
    assert dead.written == []


def test_a_bar_the_hub_does_not_map_is_refused_at_the_door_with_201() -> None:
    from tests.unit.test_mllp_handler_fuzz import PEER, answers, make_server

    server, producer, dead = make_server()
    payload = (GOLDEN_HL7 / "bar_p01_add_accounts.hl7").read_bytes()
    payload = payload.replace(b"BAR^P01^BAR_P01", b"BAR^P02^BAR_P02").replace(b"|AL|NE|", b"|||", 1)
    (ack,) = answers(asyncio.run(server.handle_frame(payload, PEER)))
    assert ack.get("MSA-1") == "AR" and (ack.get("ERR-3") or "").startswith("201")
    assert producer.sent == [] and [d["reason_code"] for d in dead.written] == [ReasonCode.UNSUPPORTED_EVENT]


# --- national outputs stay valid ---------------------------------------------------------------------

KEYS = load_test_keys()
FEEDS = {name: Feed(load_policy(name), KEYS) for name in ("hdh", "inca")}


@pytest.mark.parametrize("dest", sorted(FEEDS))
@pytest.mark.parametrize("case", CASES)
def test_the_coded_stay_fits_the_national_schemas(dest: str, case: str) -> None:
    feed = FEEDS[dest]
    sent = 0
    for event in coded(golden(case)):
        national = feed.apply(event.kind, event.record)
        assert national is not None, (dest, event.kind)
        schema = parse_schema(load_schema(feed.policy.schema_name_for(event.kind)))
        assert fastavro.validate(national.record, schema, strict=True)
        text = json.dumps(national.record, default=str)
        assert "0012345" not in text and "Patient" not in text  # no IPP, no name
        assert national.record["code"]["code"] == event.record["code"]["code"]
        sent += 1
    assert sent == len(coded(golden(case)))


# --- helpers: a raw record through the real stage ----------------------------------------------------


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


def _raw(registry: _FakeRegistry, case: str, message_type: str) -> bytes:
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
        "message_type": message_type,
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
