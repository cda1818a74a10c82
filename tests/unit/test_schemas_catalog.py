"""The canonical and dead-letter schemas, and the catalog that ties them to topics (no broker needed)."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from affluent.core.errors import SchemaError
from schemas import catalog as cat
from schemas.catalog import CheckResult, SchemaEntry, check_all, compatibility_for, entry_for
from schemas.registry import load_schema, parse_schema
from streams.normalize.envelope import SCHEMA_VERSION
from streams.normalize.envelope import event_id_of as event_id

AVRO_DIR = Path(cat.__file__).parent / "avro"
ALL_AVSC = sorted(AVRO_DIR.rglob("*.avsc"))
CANONICAL_AVSC = sorted((AVRO_DIR / "canonical").glob("*.avsc"))
CANONICAL_TYPES = [
    "patient",
    "encounter",
    "observation",
    "condition",
    "procedure",
    "diagnostic_report",
    "retraction",
]
# Named types every canonical schema must define identically: what the pseudonymizer and every consumer
# read the same way whatever the event type.
SHARED_IN_ALL = {
    "fr.affluent.canonical.Envelope",
    "fr.affluent.canonical.Source",
    "fr.affluent.canonical.Lineage",
    "fr.affluent.canonical.PatientRef",
    "fr.affluent.canonical.Ipp",
    "fr.affluent.canonical.Ins",
    "fr.affluent.canonical.InsKind",
}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _rel(path: Path) -> str:
    return path.relative_to(AVRO_DIR).with_suffix("").as_posix()


def _named_definitions(node: Any, namespace: str, out: dict[str, Any]) -> dict[str, Any]:
    """Every record/enum/fixed defined inline in a schema, by full name."""
    if isinstance(node, list):
        for item in node:
            _named_definitions(item, namespace, out)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            namespace = node.get("namespace", namespace)
            name = node["name"] if "." in node["name"] else f"{namespace}.{node['name']}"
            out[name] = node
            for field in node.get("fields", []):
                _named_definitions(field["type"], namespace, out)
        else:
            for key in ("type", "items", "values"):
                if key in node:
                    _named_definitions(node[key], namespace, out)
    return out


def _undocumented(node: Any, path: str) -> list[str]:
    """Paths of records, enums and fields without a non-empty doc."""
    missing: list[str] = []
    if isinstance(node, list):
        for item in node:
            missing += _undocumented(item, path)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum") and not str(node.get("doc", "")).strip():
            missing.append(f"{path}<{node.get('name')}>")
        for field in node.get("fields", []):
            where = f"{path}.{field['name']}"
            if not str(field.get("doc", "")).strip():
                missing.append(where)
            missing += _undocumented(field["type"], where)
        for key in ("items", "values"):
            if key in node:
                missing += _undocumented(node[key], path)
        if isinstance(node.get("type"), dict | list):
            missing += _undocumented(node["type"], path)
    return missing


# ------------------------------------------------------------------ files


def test_the_expected_files_exist():
    assert sorted(p.stem for p in CANONICAL_AVSC) == sorted(CANONICAL_TYPES)
    assert (AVRO_DIR / "dead_letter.avsc").is_file()


@pytest.mark.parametrize("path", ALL_AVSC, ids=_rel)
def test_every_schema_parses_with_fastavro(path):
    parsed = fastavro.parse_schema(_json(path))
    assert parsed["type"] == "record"
    assert parse_schema(path.read_text(encoding="utf-8"))  # the registry helper agrees


@pytest.mark.parametrize("path", ALL_AVSC, ids=_rel)
def test_every_record_enum_and_field_is_documented(path):
    schema = _json(path)
    assert _undocumented(schema, schema["name"]) == []


@pytest.mark.parametrize("path", ALL_AVSC, ids=_rel)
def test_optional_fields_are_null_first_with_a_null_default(path):
    """A union without a null default cannot be dropped or added compatibly later."""
    bad = []
    for name, definition in _named_definitions(_json(path), "", {}).items():
        for field in definition.get("fields", []):
            t = field["type"]
            if isinstance(t, list) and (
                t[0] != "null" or "default" not in field or field["default"] is not None
            ):
                bad.append(f"{name}.{field['name']}")
    assert bad == []


@pytest.mark.parametrize("stem", CANONICAL_TYPES)
def test_canonical_schemas_live_in_their_namespace_and_start_with_the_envelope(stem):
    schema = _json(AVRO_DIR / "canonical" / f"{stem}.avsc")
    assert schema["namespace"] == "fr.affluent.canonical"
    first, second = schema["fields"][:2]
    assert first["name"] == "envelope"
    assert first["type"]["name"] == "Envelope"
    assert second["name"] == "patient"
    assert second["type"]["name"] == "PatientRef"


def test_shared_types_are_identical_across_canonical_schemas():
    """The envelope and the patient block are written out in every file; this is what keeps them one."""
    definitions = {p.stem: _named_definitions(_json(p), "", {}) for p in CANONICAL_AVSC}
    for stem, defs in definitions.items():
        assert defs.keys() >= SHARED_IN_ALL, f"{stem} lacks {SHARED_IN_ALL - defs.keys()}"
    everywhere: dict[str, dict[str, str]] = {}
    for stem, defs in definitions.items():
        for name, definition in defs.items():
            everywhere.setdefault(name, {})[stem] = json.dumps(definition, sort_keys=True)
    drifted = {
        name: sorted(by_file) for name, by_file in everywhere.items() if len(set(by_file.values())) > 1
    }
    assert drifted == {}, f"named types defined differently across files: {drifted}"


def test_envelope_has_the_design_fields():
    envelope = _named_definitions(_json(AVRO_DIR / "canonical" / "observation.avsc"), "", {})[
        "fr.affluent.canonical.Envelope"
    ]
    assert [f["name"] for f in envelope["fields"]] == [
        "event_id",
        "event_type",
        "source",
        "event_time",
        "event_time_precision",
        "ingest_time",
        "schema_version",
        "lineage",
    ]


def test_load_schema_reads_subfolders():
    assert json.loads(load_schema("canonical/observation"))["name"] == "Observation"
    with pytest.raises(SchemaError):
        load_schema("canonical/no_such_type")


# ------------------------------------------------------------------ examples


def _ins_key(number: str) -> str:
    digits = number.upper().replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


NIR13 = "2840775056123"  # synthetic: woman born 07/1984 in Paris; registered under the TEST OID
T0 = datetime(2026, 3, 14, 8, 30, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 14, 9, 45, 12, 250000, tzinfo=UTC)


def _envelope(event_type: str, index: str, offset: int = 42) -> dict[str, Any]:
    return {
        "event_id": event_id("hl7v2", "CHU-BESANCON", "PAS-GAM", "MSG20260314-0001", f"{event_type}@{index}"),
        "event_type": event_type,
        "source": {
            "facility": "CHU-BESANCON",
            "application": "PAS-GAM",
            "connector": "mllp",
            "protocol": "hl7v2",
        },
        "event_time": T0,
        "event_time_precision": "minute",
        "ingest_time": T1,
        "schema_version": SCHEMA_VERSION,
        "lineage": {
            "topic": "ingest.hl7v2.raw",
            "partition": 0,
            "offset": offset,
            "raw_id": "a" * 64,
        },
    }


PATIENT_REF: dict[str, Any] = {
    "key": "0012345678@1.2.250.1.71.4.2.7",
    "ipp": {"id": "0012345678", "authority_name": "CHUB", "authority_oid": "1.2.250.1.71.4.2.7"},
    "ins": {"matricule": NIR13 + _ins_key(NIR13), "oid": "1.2.250.1.213.1.4.10", "kind": "TEST"},
    "identity_reliability": "QUAL",
    "ins_qualified": True,
}
ENCOUNTER_REF = {
    "visit_number": "V2026000123",
    "authority_name": "CHUB",
    "authority_oid": "1.2.250.1.71.4.2.7",
}
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
LAB = {
    "id": "250000015",
    "id_system": "1.2.250.1.71.4.2.2",
    "name": "Laboratoire de biochimie, CHU de Besançon",
}


def _coding(system: str | None, code: str, display: str | None = None) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


EXAMPLES: dict[str, dict[str, Any]] = {
    "patient": {
        "envelope": _envelope("patient.registered", "PID"),
        "patient": PATIENT_REF,
        "names": [
            {"use": "official", "family": "LEFÈVRE", "given": ["Zoé", "Anaïs", "Françoise"]},
            {"use": "usual", "family": "CŒURDEROI", "given": ["Zoé"]},
        ],
        "birth_date": "1984-07",
        "birth_place_code": "75056",
        "sex": "female",
        "addresses": [
            {
                "use": "home",
                "lines": ["12 rue des Œillets", "Bâtiment C"],
                "city": "Besançon",
                "postal_code": "25000",
                "country": "FRA",
            }
        ],
        "telecom": [{"system": "phone", "value": "+33 3 81 00 00 00", "use": "home"}],
        "deceased": False,
        "death_date": None,
        "marital_status": "M",
        "merged_into": None,
    },
    "encounter": {
        "envelope": _envelope("encounter.transferred", "PV1"),
        "patient": PATIENT_REF,
        "encounter": ENCOUNTER_REF,
        "status": "in-progress",
        "encounter_class": "IMP",
        "movement": {
            "type": "A02",
            "movement_id": "MVT-000981",
            "action": "INSERT",
            "time": T0,
            "historic": False,
            "original_trigger": None,
            "nature": "S",
        },
        "location": {
            "service": "CARDIO",
            "room": "214",
            "bed": "2",
            "facility": "250000015",
            "medical_unit": "UF1234",
        },
        "prior_location": {
            "service": "URG",
            "room": None,
            "bed": None,
            "facility": None,
            "medical_unit": "UF0100",
        },
        "period_start": datetime(2026, 3, 13, 22, 5, tzinfo=UTC),
        "period_end": None,
        "admit_source": _coding("urn:oid:1.2.250.1.213.1.1.4.2.281", "8", "Domicile"),
        "discharge_disposition": None,
        "service_provider": LAB | {"name": "CHU de Besançon"},
    },
    "observation": {
        "envelope": _envelope("observation.recorded", "OBR[1]/OBX[2]"),
        "patient": PATIENT_REF,
        "encounter": ENCOUNTER_REF,
        "status": "final",
        "category": "laboratory",
        "code": {
            "system": LOINC,
            "code": "2823-3",
            "display": "Potassium [Moles/volume] in Serum or Plasma",
            "local": False,
        },
        "additional_codings": [_coding("urn:oid:1.2.250.1.71.4.2.7.99", "K+", "Kaliémie")],
        "value_quantity": {
            "value": 5.8,
            "comparator": None,
            "unit": "mmol/L",
            "unit_system": UCUM,
            "original_unit": "mmol/l",
        },
        "value_code": None,
        "value_string": None,
        "value_boolean": None,
        "data_absent_reason": None,
        "reference_range": {"low": 3.5, "high": 5.1, "text": "3,5-5,1"},
        "interpretation": [
            _coding("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H")
        ],
        "method": None,
        "device": None,
        "effective_time": T0,
        "effective_time_precision": "minute",
        "issued": T1,
        "components": [],
        "specimen_type": _coding("http://snomed.info/sct", "119364003", "Serum specimen"),
        "performer_organization": LAB,
    },
    "condition": {
        "envelope": _envelope("condition.recorded", "DG1[1]"),
        "patient": PATIENT_REF,
        "encounter": ENCOUNTER_REF,
        "code": _coding("https://smt.esante.gouv.fr/terminologie-cim-10/", "C50.4", "Tumeur maligne du sein"),
        "additional_codings": [],
        "category": "encounter-diagnosis",
        "diagnosis_role": "DP",
        "clinical_status": "active",
        "verification_status": "confirmed",
        "onset_time": datetime(2026, 2, 1, tzinfo=UTC),
        "onset_time_precision": "month",
        "recorded_time": T1,
        "tumour": {
            "topography": _coding("CIM-O-3", "C50.4", "Quadrant supéro-externe du sein"),
            "morphology": _coding("CIM-O-3", "8500/3", "Carcinome canalaire infiltrant"),
            "stage": {
                "classification": "UICC TNM 8",
                "type": "c",
                "summary": "IIA",
                "t": "T2",
                "n": "N0",
                "m": "M0",
            },
        },
    },
    "procedure": {
        "envelope": _envelope("procedure.recorded", "PR1[1]"),
        "patient": PATIENT_REF,
        "encounter": ENCOUNTER_REF,
        "code": _coding("CCAM", "DEQP003", "Électrocardiographie sur au moins 12 dérivations"),
        "additional_codings": [],
        "activity": "1",
        "phase": "0",
        "status": "completed",
        "performed_start": T0,
        "performed_end": None,
        "performed_time_precision": "minute",
        "performer_organization": {"id": None, "id_system": None, "name": "Service de cardiologie"},
    },
    "diagnostic_report": {
        "envelope": _envelope("diagnostic_report.issued", "OBR[1]"),
        "patient": PATIENT_REF,
        "encounter": ENCOUNTER_REF,
        "code": _coding(LOINC, "24326-1", "Electrolytes 1998 panel - Serum or Plasma"),
        "status": "final",
        "category": "LAB",
        "effective_time": T0,
        "effective_time_precision": "minute",
        "issued": T1,
        "result_event_ids": [
            event_id(
                "hl7v2",
                "CHU-BESANCON",
                "PAS-GAM",
                "MSG20260314-0001",
                f"observation.recorded@OBR[1]/OBX[{i}]",
            )
            for i in (1, 2, 3)
        ],
        "conclusion": "Hyperkaliémie modérée.",
        "conclusion_codes": [
            _coding("https://smt.esante.gouv.fr/terminologie-cim-10/", "E87.5", "Hyperkaliémie")
        ],
        "performer_organization": LAB,
    },
    "retraction": {
        "envelope": _envelope("retraction.issued", "MRG"),
        "patient": PATIENT_REF,
        "kind": "MERGE",
        "target_event_ids": [],
        "target_source_reference": None,
        "retired_patient": {
            "key": "0099887766@1.2.250.1.71.4.2.7",
            "ipp": {"id": "0099887766", "authority_name": "CHUB", "authority_oid": "1.2.250.1.71.4.2.7"},
            "ins": None,
            "identity_reliability": "PROV",
            "ins_qualified": False,
        },
        "reason_code": "identity-merge",
    },
}

# A telemonitoring blood pressure reading: a device, MDC codes, components and no top-level value.
DEVICE_BP: dict[str, Any] = copy.deepcopy(EXAMPLES["observation"]) | {
    "envelope": _envelope("observation.recorded", "OBX[1]"),
    "encounter": None,
    "category": "vital-signs",
    "code": {
        "system": "urn:iso:std:iso:11073:10101",
        "code": "150020",
        "display": "MDC_PRESS_BLD_NONINV",
        "local": False,
    },
    "additional_codings": [_coding(LOINC, "85354-9", "Blood pressure panel")],
    "value_quantity": None,
    "reference_range": None,
    "interpretation": [],
    "specimen_type": None,
    "performer_organization": None,
    "device": {
        "id": "00-1C-05-FF-FE-12-34-56",
        "id_system": "EUI-64",
        "model": "TensioSynth 3000",
        "manufacturer": "Synthétique SA",
        "hierarchy": "1.1.1.0",
    },
    "components": [
        {
            "code": {"system": "urn:iso:std:iso:11073:10101", "code": code, "display": name, "local": False},
            "value_quantity": {
                "value": value,
                "comparator": None,
                "unit": "mm[Hg]",
                "unit_system": UCUM,
                "original_unit": "266016",
            },
            "value_code": None,
            "value_string": None,
            "value_boolean": None,
            "data_absent_reason": None,
            "reference_range": None,
            "interpretation": [],
        }
        for code, name, value in (
            ("150021", "MDC_PRESS_BLD_NONINV_SYS", 142.0),
            ("150022", "MDC_PRESS_BLD_NONINV_DIA", 91.0),
        )
    ],
}

DEAD_LETTER: dict[str, Any] = {
    "stage": "normalize",
    "reason_code": "bad_ins_key",
    "reason": "INS matricule key does not match the number",
    "location": "PID-3[2]",
    "rule": "ins.key",
    "raw_id": "b" * 64,
    "event_id": None,
    "lineage": {"topic": "ingest.hl7v2.raw", "partition": 2, "offset": 1234},
    "source": {
        "facility": "CHU-BESANCON",
        "application": "PAS-GAM",
        "connector": "mllp",
        "protocol": "hl7v2",
    },
    "failed_at": T1,
    "raw_payload": "MSH|^~\\&|PAS-GAM|CHU-BESANCON|...\rPID|||0012345678^^^CHUB||LEFÈVRE^Zoé\r".encode(
        "latin-1"
    ),
    "content_type": "x-application/hl7-v2+er7",
    "attributes": {"message_type": "ADT^A01"},
}


def _round_trip(schema_name: str, record: dict[str, Any]) -> dict[str, Any]:
    schema = parse_schema(load_schema(schema_name))
    # strict: a key the schema does not know is an error, not silently dropped by the writer
    assert fastavro.validate(record, schema, strict=True)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    back: dict[str, Any] = fastavro.schemaless_reader(buf, schema)
    return back


@pytest.mark.parametrize("stem", CANONICAL_TYPES)
def test_a_realistic_example_of_each_canonical_type_round_trips(stem):
    record = EXAMPLES[stem]
    assert _round_trip(f"canonical/{stem}", record) == record


def test_a_device_blood_pressure_reading_round_trips():
    assert _round_trip("canonical/observation", DEVICE_BP) == DEVICE_BP


def test_a_dead_letter_round_trips_and_a_minimal_ingest_one_too():
    assert _round_trip("dead_letter", DEAD_LETTER) == DEAD_LETTER
    minimal = {
        "stage": "ingest",
        "reason_code": "no_msh",
        "reason": "message does not start with an MSH segment",
        "source": {"connector": "mllp", "protocol": "hl7v2"},
        "failed_at": T1,
    }
    back = _round_trip("dead_letter", minimal)
    assert back["source"] == {"facility": "", "application": "", "connector": "mllp", "protocol": "hl7v2"}
    assert back["lineage"] is None and back["raw_payload"] is None and back["attributes"] == {}


def test_optional_fields_may_be_left_out():
    """Producers only fill what the source gave; every optional field falls back to its default."""
    sparse = {
        "envelope": _envelope("observation.recorded", "OBX[1]")
        | {"event_time": None, "event_time_precision": None},
        "patient": {"key": "42@HOSP", "ipp": {"id": "42"}},
        "status": "preliminary",
        "code": {"code": "GLY-LOC"},
    }
    sparse["envelope"].pop("event_time")
    back = _round_trip("canonical/observation", sparse)
    assert back["patient"]["ins"] is None and back["patient"]["ins_qualified"] is False
    assert back["code"]["local"] is False
    assert back["components"] == [] and back["value_quantity"] is None


@pytest.mark.parametrize(
    ("schema_name", "bad"),
    [
        ("canonical/patient", {"sex": "F"}),  # HL7 code, not the FHIR gender the enum requires
        ("canonical/retraction", {"kind": "ERASE"}),
        ("canonical/encounter", {"movement": {"type": "A02", "action": "DELETE"}}),
    ],
)
def test_closed_code_sets_are_enforced_by_the_schema(schema_name, bad):
    record = copy.deepcopy(EXAMPLES[schema_name.split("/")[1]]) | bad
    schema = parse_schema(load_schema(schema_name))
    with pytest.raises(fastavro.validation.ValidationError):
        fastavro.validate(record, schema, strict=True)


def test_the_example_ins_key_is_valid():
    matricule = PATIENT_REF["ins"]["matricule"]
    assert len(matricule) == 15
    assert (int(matricule[:13]) + int(matricule[13:])) % 97 == 0


# ------------------------------------------------------------------ event ids


def test_event_id_is_deterministic_and_sensitive_to_each_part():
    parts = ("hl7v2", "CHU-BESANCON", "PAS-GAM", "MSG1", "observation.recorded@OBR[1]/OBX[1]")
    first = event_id(*parts)
    assert first == event_id(*parts)
    assert len(first) == 64 and int(first, 16) >= 0
    for i in range(len(parts)):
        changed = list(parts)
        changed[i] += "x"
        assert event_id(*changed) != first
    # pinned: changing the rule silently would break deduplication against already published events
    assert first == __import__("hashlib").sha256("|".join(parts).encode()).hexdigest()


# ------------------------------------------------------------------ catalog


def test_catalog_maps_every_topic_to_its_schema():
    mapping = {e.topic: e.schema_name for e in cat.catalog()}
    assert mapping == {
        "ingest.hl7v2.raw": "raw_message",
        "ingest.fhir.raw": "raw_message",
        "ingest.device.raw": "raw_message",
        **{f"canonical.{t}": f"canonical/{t}" for t in CANONICAL_TYPES},
        "dlq.ingest": "dead_letter",
        "dlq.normalize": "dead_letter",
        "dlq.pseudonymize": "dead_letter",
        "control.audit": "audit_entry",
        **{
            f"national.{d}.{k}.v1": f"national/{d}/{k}_v1" for d, ks in cat.NATIONAL_KINDS.items() for k in ks
        },
    }
    assert set(cat.CANONICAL_TOPICS) == {f"canonical.{t}" for t in CANONICAL_TYPES}


def test_every_catalog_entry_has_an_existing_valid_schema_and_value_subject():
    for entry in cat.catalog():
        assert entry.subject == f"{entry.topic}-value"
        assert parse_schema(cat.schema_text(entry))


def test_every_schema_file_is_in_the_catalog():
    used = {e.schema_name for e in cat.catalog()}
    assert {_rel(p) for p in ALL_AVSC} <= used


def test_compatibility_rule_national_full_transitive_others_backward():
    for entry in cat.catalog():
        expected = "FULL_TRANSITIVE" if entry.topic.startswith("national.") else "BACKWARD"
        assert entry.compatibility == expected
    national = SchemaEntry.for_topic("national.hdh.observation.v1", "national/hdh/observation_v1")
    assert national.compatibility == "FULL_TRANSITIVE"
    assert national.subject == "national.hdh.observation.v1-value"
    assert compatibility_for("canonical.observation") == "BACKWARD"
    assert compatibility_for("nationalist.x") == "BACKWARD"


def test_entry_for_finds_a_topic_and_refuses_unknown_ones():
    assert entry_for("canonical.observation").schema_name == "canonical/observation"
    with pytest.raises(SchemaError):
        entry_for("canonical.nope")


# ------------------------------------------------------------------ check_all logic, with a stand-in registry


class FakeRegistry:
    """Just the calls check_all makes, answering like the registry does."""

    url = "fake://registry"

    def __init__(self, levels: dict[str, str | None], compatible: bool = True) -> None:
        self.levels = levels
        self.compatible = compatible
        self.asked: list[str] = []

    def has_subject(self, subject: str) -> bool:
        return subject in self.levels

    def get_compatibility(self, subject: str) -> str | None:
        return self.levels.get(subject)

    def is_compatible(self, subject: str, schema_text: str) -> bool:
        self.asked.append(subject)
        return self.compatible


def _by_topic(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.entry.topic: r for r in results}


def test_check_all_says_not_registered_yet_for_absent_subjects():
    results = check_all(FakeRegistry({}))  # type: ignore[arg-type]
    assert len(results) == len(cat.catalog())
    assert all(r.ok and r.detail == "not registered yet" for r in results)


def test_check_all_reports_incompatible_schemas_and_weak_levels():
    obs = entry_for("canonical.observation")
    pat = entry_for("canonical.patient")
    enc = entry_for("canonical.encounter")
    fake = FakeRegistry({obs.subject: "BACKWARD", pat.subject: "NONE", enc.subject: None})
    results = _by_topic(check_all(fake, [obs, pat, enc]))  # type: ignore[arg-type]
    assert results["canonical.observation"].ok
    assert not results["canonical.patient"].ok and "NONE" in results["canonical.patient"].detail
    assert not results["canonical.encounter"].ok and "global default" in results["canonical.encounter"].detail
    fake.compatible = False
    broken = check_all(fake, [obs])  # type: ignore[arg-type]
    assert not broken[0].ok and "incompatible" in broken[0].detail


def test_check_all_reports_an_unparsable_candidate_without_asking_the_registry():
    obs = entry_for("canonical.observation")
    fake = FakeRegistry({obs.subject: "BACKWARD"})
    results = check_all(fake, [obs], text_for=lambda e: '{"type": "record"')  # type: ignore[arg-type]
    assert not results[0].ok and "invalid Avro schema" in results[0].detail
    assert fake.asked == []
