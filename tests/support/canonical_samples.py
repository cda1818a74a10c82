"""Realistic canonical records of every kind, full of canaries, for the pseudonymization tests.

Synthetic French data only (design §11): NIRs with valid keys under the INS-NIR-TEST OID, names with
accents, a Jura address. Every directly identifying value is a *canary*: a string distinctive enough
that finding it anywhere in a national record — decoded, encoded, in an exception — can only mean a
leak. ``CANARIES`` lists them; the tests search for each in several encodings.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from formats.clinical.identity import ins_key
from streams.normalize.envelope import event_id_of
from streams.pseudonymize.keys import StaticKeyProvider, file_provider

TEST_OID = "1.2.250.1.213.1.4.10"  # INS-NIR-TEST
IPP_AUTHORITY_OID = "1.2.250.1.999.1.1.1"
VISIT_AUTHORITY_OID = "1.2.250.1.999.2.2.2"


def matricule(nir13: str) -> str:
    return f"{nir13}{ins_key(nir13):02d}"


# Woman born in July 1984 in Besançon (25056), as a synthetic NIR.
NIR_QUALIFIED = matricule("2840725056311")
NIR_UNQUALIFIED = matricule("1710375112047")
NIR_CORSICA = matricule("165062A004017")  # born in Ajaccio (2A004): the key counts 2A as 19

FAMILY = "DUCANARÏ-LŒUVRE"
FAMILY_USUAL = "ÇANARIÉ"
GIVEN = ("Zoéçanarine", "Anaïs-Canarië")
IPP = "0088123477"
IPP_OTHER = "0099776655"
IPP_AUTHORITY_NAME = "CANARY-AUTH-IPP"
PHONE = "+33 6 12 34 56 78"
PHONE_DIGITS = "0612345678"
EMAIL = "zoe.canari@exemple-canari.fr"
STREET = "17 rue des Canaris Œillets"
STREET_2 = "Bâtiment Çanari"
CITY = "Saint-Canari-lès-Bains"
POSTAL_CODE = "39170"
BIRTH_DATE = "1984-07-23"
BIRTH_PLACE = "25056"
DEATH_DATE = "2025-11-29"
VISIT_NUMBER = "VN-CANARY-20260314-77"
MOVEMENT_ID = "MVT-CANARY-981"
DEVICE_ID = "00-1C-05-FF-FE-CA-4E-77"
SOURCE_REFERENCE = "Observation/canary-ref-991"
CONCLUSION = f"Mme {FAMILY} Zoé, joignable au {PHONE}: hyperkaliémie."
VALUE_STRING = f"Patiente {FAMILY_USUAL} vue par Dr CANARIDOC"
RANGE_TEXT = "canary-négatif"
DISPLAY = "Kaliémie CANARI-LIBELLÉ"
RAW_ID = "c4a9a7" * 10 + "cafe"
ROOM, BED = "CANARY-CH-214", "CANARY-LIT-2"

CANARIES: tuple[str, ...] = (
    NIR_QUALIFIED,
    NIR_UNQUALIFIED,
    NIR_CORSICA,
    NIR_QUALIFIED[:13],
    FAMILY,
    FAMILY_USUAL,
    *GIVEN,
    IPP,
    IPP_OTHER,
    IPP_AUTHORITY_NAME,
    IPP_AUTHORITY_OID,
    VISIT_AUTHORITY_OID,
    PHONE,
    PHONE_DIGITS,
    EMAIL,
    STREET,
    STREET_2,
    CITY,
    POSTAL_CODE,
    BIRTH_DATE,
    BIRTH_PLACE,
    DEATH_DATE,
    VISIT_NUMBER,
    MOVEMENT_ID,
    DEVICE_ID,
    SOURCE_REFERENCE,
    CONCLUSION,
    "CANARIDOC",
    RANGE_TEXT,
    DISPLAY,
    RAW_ID,
    ROOM,
    BED,
)

# Other spellings of the same facts that an output could hold without holding a canary verbatim.
CANARY_VARIANTS: tuple[str, ...] = (
    BIRTH_DATE.replace("-", ""),  # HL7 form
    "23/07/1984",
    PHONE.replace(" ", ""),
    NIR_QUALIFIED[:13] + " " + NIR_QUALIFIED[13:],
)

T0 = datetime(2026, 3, 14, 8, 30, tzinfo=UTC)
T1 = datetime(2026, 3, 14, 9, 45, 12, 250000, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CIM10 = "https://smt.esante.gouv.fr/terminologie-cim-10/"
LAB = {
    "id": "250000015",
    "id_system": "1.2.250.1.71.4.2.2",
    "name": "Laboratoire de biochimie, CHU de Besançon",
}
FACILITY, APPLICATION = "CHU-BESANCON", "PAS-GAM"


def canonical_event_id(message_id: str, index: str) -> str:
    return event_id_of("hl7v2", FACILITY, APPLICATION, message_id, index)


def envelope(event_type: str, index: str, message_id: str = "MSG20260314-0001") -> dict[str, Any]:
    return {
        "event_id": canonical_event_id(message_id, f"{event_type}@{index}"),
        "event_type": event_type,
        "source": {
            "facility": FACILITY,
            "application": APPLICATION,
            "connector": "mllp",
            "protocol": "hl7v2",
        },
        "event_time": T0,
        "event_time_precision": "minute",
        "ingest_time": T1,
        "schema_version": 1,
        "lineage": {"topic": "ingest.hl7v2.raw", "partition": 3, "offset": 1234567, "raw_id": RAW_ID},
    }


def patient_ref(
    *, qualified: bool = True, ins: bool = True, ipp: str = IPP, nir: str = NIR_QUALIFIED
) -> dict[str, Any]:
    return {
        "key": f"{ipp}@{IPP_AUTHORITY_OID}",
        "ipp": {"id": ipp, "authority_name": IPP_AUTHORITY_NAME, "authority_oid": IPP_AUTHORITY_OID},
        "ins": {"matricule": nir, "oid": TEST_OID, "kind": "TEST"} if ins else None,
        "identity_reliability": "QUAL" if qualified else ("VALI" if ins else "PROV"),
        "ins_qualified": qualified and ins,
    }


ENCOUNTER_REF = {
    "visit_number": VISIT_NUMBER,
    "authority_name": "CANARY-AUTH-VISIT",
    "authority_oid": VISIT_AUTHORITY_OID,
}


def coding(system: str | None, code: str, display: str | None = DISPLAY) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


def _patient() -> dict[str, Any]:
    return {
        "envelope": envelope("patient.registered", "PID"),
        "patient": patient_ref(),
        "names": [
            {"use": "official", "family": FAMILY, "given": list(GIVEN)},
            {"use": "usual", "family": FAMILY_USUAL, "given": [GIVEN[0]]},
        ],
        "birth_date": BIRTH_DATE,
        "birth_place_code": BIRTH_PLACE,
        "sex": "female",
        "addresses": [
            {
                "use": "home",
                "lines": [STREET, STREET_2],
                "city": CITY,
                "postal_code": POSTAL_CODE,
                "country": "FRA",
            },
            {
                "use": "work",
                "lines": ["Hauptstraße 5"],
                "city": "Basel",
                "postal_code": "4051",
                "country": "CHE",
            },
        ],
        "telecom": [
            {"system": "phone", "value": PHONE, "use": "mobile"},
            {"system": "phone", "value": PHONE_DIGITS, "use": "home"},
            {"system": "email", "value": EMAIL, "use": "home"},
        ],
        "deceased": True,
        "death_date": DEATH_DATE,
        "marital_status": "M",
        "merged_into": None,
    }


def _encounter() -> dict[str, Any]:
    return {
        "envelope": envelope("encounter.transferred", "PV1"),
        "patient": patient_ref(),
        "encounter": dict(ENCOUNTER_REF),
        "status": "in-progress",
        "encounter_class": "IMP",
        "movement": {
            "type": "A02",
            "movement_id": MOVEMENT_ID,
            "action": "INSERT",
            "time": T0,
            "historic": False,
            "original_trigger": None,
            "nature": "S",
        },
        "location": {
            "service": "CARDIO",
            "room": ROOM,
            "bed": BED,
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
        "admit_source": coding("urn:oid:1.2.250.1.213.1.1.4.2.281", "8"),
        "discharge_disposition": None,
        "service_provider": {"id": "250000015", "id_system": "1.2.250.1.71.4.2.2", "name": "CHU de Besançon"},
    }


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {
        "value": value,
        "comparator": None,
        "unit": unit,
        "unit_system": UCUM,
        "original_unit": unit.lower(),
    }


def _observation() -> dict[str, Any]:
    return {
        "envelope": envelope("observation.recorded", "OBR[1]/OBX[2]"),
        "patient": patient_ref(),
        "encounter": dict(ENCOUNTER_REF),
        "status": "final",
        "category": "laboratory",
        "code": {"system": LOINC, "code": "2823-3", "display": DISPLAY, "local": False},
        "additional_codings": [coding("urn:oid:1.2.250.1.71.4.2.7.99", "K+")],
        "value_quantity": _quantity(5.8, "mmol/L"),
        "value_code": None,
        "value_string": VALUE_STRING,
        "value_boolean": None,
        "data_absent_reason": None,
        "reference_range": {"low": 3.5, "high": 5.1, "text": RANGE_TEXT},
        "interpretation": [coding("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "H")],
        "method": None,
        "device": None,
        "effective_time": T0,
        "effective_time_precision": "minute",
        "issued": T1,
        "components": [],
        "specimen_type": coding("http://snomed.info/sct", "119364003"),
        "performer_organization": dict(LAB),
    }


def _device_observation() -> dict[str, Any]:
    """A telemonitoring blood pressure: device, MDC codes, components, no top-level value."""
    obs = _observation()
    obs.update(
        envelope=envelope("observation.recorded", "OBX[1]", "PCD-0042"),
        encounter=None,
        category="vital-signs",
        code={"system": "urn:iso:std:iso:11073:10101", "code": "150020", "display": DISPLAY, "local": False},
        value_quantity=None,
        value_string=None,
        reference_range=None,
        interpretation=[],
        specimen_type=None,
        performer_organization=None,
        device={
            "id": DEVICE_ID,
            "id_system": "EUI-64",
            "model": "TensioSynth 3000",
            "manufacturer": "Synthétique SA",
            "hierarchy": "1.1.1.0",
        },
        components=[
            {
                "code": {
                    "system": "urn:iso:std:iso:11073:10101",
                    "code": code,
                    "display": DISPLAY,
                    "local": False,
                },
                "value_quantity": _quantity(value, "mm[Hg]"),
                "value_code": None,
                "value_string": VALUE_STRING,
                "value_boolean": None,
                "data_absent_reason": None,
                "reference_range": {"low": None, "high": 140.0, "text": RANGE_TEXT},
                "interpretation": [],
            }
            for code, value in (("150021", 142.0), ("150022", 91.0))
        ],
    )
    return obs


def _condition() -> dict[str, Any]:
    return {
        "envelope": envelope("condition.recorded", "DG1[1]"),
        "patient": patient_ref(),
        "encounter": dict(ENCOUNTER_REF),
        "code": coding(CIM10, "C50.4"),
        "additional_codings": [coding("http://snomed.info/sct", "254838004")],
        "category": "encounter-diagnosis",
        "diagnosis_role": "DP",
        "clinical_status": "active",
        "verification_status": "confirmed",
        "onset_time": datetime(2026, 1, 31, 23, 0, tzinfo=UTC),  # 1 February 2026 in Paris
        "onset_time_precision": "month",
        "recorded_time": T1,
        "tumour": {
            "topography": coding("CIM-O-3", "C50.4"),
            "morphology": coding("CIM-O-3", "8500/3"),
            "stage": {
                "classification": "UICC TNM 8",
                "type": "c",
                "summary": "IIA",
                "t": "T2",
                "n": "N0",
                "m": "M0",
            },
        },
    }


def _procedure() -> dict[str, Any]:
    return {
        "envelope": envelope("procedure.recorded", "PR1[1]"),
        "patient": patient_ref(),
        "encounter": dict(ENCOUNTER_REF),
        "code": coding("CCAM", "QEFA003"),
        "additional_codings": [],
        "activity": "1",
        "phase": "0",
        "status": "completed",
        "performed_start": T0,
        "performed_end": T1,
        "performed_time_precision": "minute",
        "performer_organization": {"id": "250000015", "id_system": "1.2.250.1.71.4.2.2", "name": "Chirurgie"},
    }


def _diagnostic_report() -> dict[str, Any]:
    return {
        "envelope": envelope("diagnostic_report.issued", "OBR[1]"),
        "patient": patient_ref(),
        "encounter": dict(ENCOUNTER_REF),
        "code": coding(LOINC, "24326-1"),
        "status": "final",
        "category": "LAB",
        "effective_time": T0,
        "effective_time_precision": "minute",
        "issued": T1,
        "result_event_ids": [
            canonical_event_id("MSG20260314-0001", f"observation.recorded@OBR[1]/OBX[{i}]") for i in (1, 2, 3)
        ],
        "conclusion": CONCLUSION,
        "conclusion_codes": [coding(CIM10, "E87.5")],
        "performer_organization": dict(LAB),
    }


def _retraction() -> dict[str, Any]:
    return {
        "envelope": envelope("retraction.issued", "MRG", "MSG20260314-0099"),
        "patient": patient_ref(),
        "kind": "MERGE",
        "target_event_ids": [canonical_event_id("MSG20260301-0007", "observation.recorded@OBR[1]/OBX[1]")],
        "target_source_reference": SOURCE_REFERENCE,
        "retired_patient": patient_ref(qualified=False, ins=False, ipp=IPP_OTHER),
        "reason_code": "identity-merge",
    }


_BUILDERS = {
    "patient": _patient,
    "encounter": _encounter,
    "observation": _observation,
    "condition": _condition,
    "procedure": _procedure,
    "diagnostic_report": _diagnostic_report,
    "retraction": _retraction,
}
KINDS = tuple(_BUILDERS)


def sample(kind_: str, /, **changes: Any) -> dict[str, Any]:
    """A fresh record of ``kind_`` (safe to mutate), with top-level fields replaced by ``changes``."""
    record = _BUILDERS[kind_]()
    record.update(copy.deepcopy(changes))
    return record


def device_observation() -> dict[str, Any]:
    return _device_observation()


def all_samples() -> list[tuple[str, dict[str, Any]]]:
    """Every kind, plus the variants that take other paths: device reading, unqualified and IPP-only
    patients, a Corsican INS, an opposition retraction."""
    out = [(kind, sample(kind)) for kind in KINDS]
    out.append(("observation", device_observation()))
    out.append(("patient", sample("patient", patient=patient_ref(qualified=False, nir=NIR_UNQUALIFIED))))
    out.append(("patient", sample("patient", patient=patient_ref(ins=False, qualified=False))))
    out.append(("condition", sample("condition", patient=patient_ref(nir=NIR_CORSICA))))
    out.append(
        (
            "retraction",
            sample(
                "retraction",
                kind="OPPOSITION",
                retired_patient=None,
                target_event_ids=[],
                target_source_reference=None,
                reason_code="patient-objection",
            ),
        )
    )
    out.append(("diagnostic_report", sample("diagnostic_report", category="PAT")))
    return out


# ------------------------------------------------------------------ test keys

TEST_KEYS_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "test-keys.json"


def load_test_keys() -> StaticKeyProvider:
    """The obviously fake keys of tests/fixtures/keys/test-keys.json (hdh has a current and a retired key)."""
    return file_provider(TEST_KEYS_PATH)
