"""Synthetic hospital traffic: HL7 v2 messages as real interfaces send them, about patients who do not exist.

Used by the demo and the benchmarks (and by the simulator to come). Identities are invented: names from
a small list with French accents, NIRs with valid keys under the INS *test* OID (1.2.250.1.213.1.4.10),
IPPs under a fictitious hospital OID. Messages use CR separators, ISO-8859-15 bytes (Œ is not in
8859-1), escape sequences,
repetitions and IHE PAM France Z-segments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from formats.clinical.identity import ins_key

INS_TEST_OID = "1.2.250.1.213.1.4.10"
HOSPITAL_OID = "1.2.250.1.71.4.2.7.99"
FAMILY = ["LEFÈVRE", "GARÇON", "NOËL", "MÜLLER", "BŒUF", "DUPRÉ", "HÉBERT", "FRANÇOIS", "LOÏC", "CÔTÉ"]
GIVEN_F = ["Amélie", "Zoé", "Anaïs", "Hélène", "Maëlle", "Léa", "Noémie", "Inès"]
GIVEN_M = ["Loïc", "Jérôme", "François", "Gaëtan", "Noël", "Raphaël", "Anaël", "Théo"]
LAB = [
    ("2345-7", "Glucose [Masse/Volume] Sérum", "g/L", 0.7, 1.1),
    ("2160-0", "Créatinine [Masse/Volume] Sérum", "µmol/L", 45.0, 104.0),
    ("2951-2", "Sodium [Moles/Volume] Sérum", "mmol/L", 135.0, 145.0),
    ("718-7", "Hémoglobine [Masse/Volume] Sang", "g/dL", 12.0, 17.0),
]


@dataclass(frozen=True)
class SyntheticPatient:
    ipp: str
    nir: str  # 15 characters, valid key
    family: str
    given: str
    sex: str
    birth: str  # YYYYMMDD
    qualified: bool


def patient(rng: random.Random, index: int, ipp_base: int = 900000) -> SyntheticPatient:
    sex = rng.choice("MF")
    birth = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 80 * 365))
    department = rng.choice(["75", "69", "13", "2A"])
    serial = f"{rng.randrange(1, 999):03d}{rng.randrange(1, 999):03d}"
    body = f"{1 if sex == 'M' else 2}{birth:%y%m}{department}{serial}"
    return SyntheticPatient(
        ipp=f"{ipp_base + index:08d}",
        nir=f"{body}{ins_key(body):02d}",
        family=rng.choice(FAMILY),
        given=rng.choice(GIVEN_M if sex == "M" else GIVEN_F),
        sex=sex,
        birth=f"{birth:%Y%m%d}",
        qualified=rng.random() < 0.7,
    )


def _msh(control_id: str, when: datetime, message_type: str) -> str:
    stamp = f"{when:%Y%m%d%H%M%S}"
    head = f"MSH|^~\\&|SIH-DEMO|CHU-SYNTH|AFFLUENT|HUB|{stamp}||{message_type}|{control_id}|P|2.5"
    return head + "|||||FRA|8859/15"


def _pid(p: SyntheticPatient) -> str:
    ids = (
        f"{p.ipp}^^^CHU-SYNTH&{HOSPITAL_OID}&ISO^PI~{p.nir}^^^ASIP-SANTE-INS-NIR-TEST&{INS_TEST_OID}&ISO^INS"
    )
    status = "QUAL" if p.qualified else "VALI"
    fields = [
        "PID",
        "1",
        "",
        ids,
        "",
        f"{p.family}^{p.given}^^^^^L",
        "",
        p.birth,
        p.sex,
        "",
        "",
        "3 rue de l\\T\\Église^^Lyon^^69003^FRA^H",
        "",
        "0472000000^PRN^PH",
    ]
    fields += [""] * (32 - len(fields) + 1)
    fields[32] = status
    return "|".join(fields)


def _pv1(visit: str, admitted: datetime | None) -> str:
    fields = [""] * 45
    fields[:4] = ["PV1", "1", "I", "CARDIO^101^1^CHU-SYNTH"]
    fields[19] = f"{visit}^^^CHU-SYNTH&{HOSPITAL_OID}&ISO^VN"
    if admitted is not None:
        fields[44] = f"{admitted:%Y%m%d%H%M%S}"
    return "|".join(fields).rstrip("|")


def adt_a01(p: SyntheticPatient, control_id: str, when: datetime, visit: str) -> bytes:
    return adt(p, "A01", control_id, when, visit)


# IHE PAM France: the message structure of each trigger (A02, A03, A08 share ADT_A01's or their own).
_ADT_STRUCTURE = {"A01": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03", "A08": "ADT_A01", "A40": "ADT_A39"}


# Coded stay diagnoses (CIM-10, as French HIS send them in DG1): a few cancers, mostly not.
CANCERS = ("C34.1", "C25.0", "C50.4", "C18.7", "C61", "C16.9")
OTHER_DIAGNOSES = ("I10", "E11.9", "J44.9", "K35.8", "N18.3", "I48.9")


def adt(
    p: SyntheticPatient,
    trigger: str,
    control_id: str,
    when: datetime,
    visit: str,
    retired_ipp: str = "",
    diagnosis: str = "",
) -> bytes:
    """An ADT message: admission (A01), transfer (A02), discharge (A03), update (A08) or, with
    `retired_ipp`, the merge (A40) of a duplicate record into this patient's; with `diagnosis` (a
    CIM-10 code), one DG1 coding it as the stay's principal diagnosis (PMSI DP), final."""
    stamp = f"{when:%Y%m%d%H%M%S}"
    segments = [_msh(control_id, when, f"ADT^{trigger}^{_ADT_STRUCTURE[trigger]}"), f"EVN||{stamp}", _pid(p)]
    if trigger == "A40":
        segments.append(f"MRG|{retired_ipp}^^^CHU-SYNTH&{HOSPITAL_OID}&ISO^PI")
    else:
        segments.append(_pv1(visit, when if trigger == "A01" else None))
        action = "INSERT" if trigger != "A08" else "UPDATE"
        segments.append(f"ZBE|MVT{control_id}^CHU-SYNTH|{stamp}||{action}|N")
    if diagnosis:
        segments.append(f"DG1|1||{diagnosis}^^CIM10||{stamp}|F|||||||||1||DP")
    return ("\r".join(segments) + "\r").encode("iso8859-15")


MALFORMED = ("no_patient", "bad_time", "unsupported_type")


def malformed(kind: str, p: SyntheticPatient, control_id: str, when: datetime, visit: str) -> bytes:
    """Messages real interfaces get wrong. The door stores the first two (they are well-formed HL7)
    and normalization dead-letters them; it refuses the third at once (AR), so it is never acknowledged."""
    good = adt(p, "A02", control_id, when, visit).decode("iso8859-15")
    segments = good.rstrip("\r").split("\r")
    if kind == "no_patient":
        segments = [s for s in segments if not s.startswith("PID|")]
    elif kind == "bad_time":
        segments[1] = "EVN||2026-13-45 25:61"
    elif kind == "unsupported_type":
        segments[0] = segments[0].replace("ADT^A02^ADT_A02", "SIU^S12^SIU_S12")
    else:
        raise ValueError(f"unknown malformation {kind!r}; known: {', '.join(MALFORMED)}")
    return ("\r".join(segments) + "\r").encode("iso8859-15")


def _obr(control_id: str, when: datetime) -> str:
    fields = [""] * 26
    fields[0] = "OBR"
    fields[1] = "1"
    fields[2] = f"{control_id}^DEMO"
    fields[3] = f"{control_id}^LAB"
    fields[4] = "24323-8^Bilan métabolique^LN"
    fields[7] = f"{when:%Y%m%d%H%M%S}"
    fields[22] = f"{when:%Y%m%d%H%M%S}"
    fields[24] = "CH"
    fields[25] = "F"
    return "|".join(fields)


def oru_r01(rng: random.Random, p: SyntheticPatient, control_id: str, when: datetime, visit: str) -> bytes:
    segments = [
        _msh(control_id, when, "ORU^R01^ORU_R01"),
        _pid(p),
        _pv1(visit, None),
        _obr(control_id, when),
    ]
    for i, (code, name, unit, low, high) in enumerate(rng.sample(LAB, 3), start=1):
        value = round(rng.uniform(low * 0.8, high * 1.2), 2)
        flag = "H" if value > high else ("L" if value < low else "N")
        segments.append(
            f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}|{low}-{high}|{flag}|||F|||{when:%Y%m%d%H%M%S}"
        )
    return ("\r".join(segments) + "\r").encode("iso8859-15")


def cohort(seed: int, patients: int, ipp_base: int = 900000) -> list[SyntheticPatient]:
    """The patients `messages(…, seed, patients)` talks about (same seed, same people)."""
    rng = random.Random(seed)
    return [patient(rng, i, ipp_base) for i in range(patients)]


def messages(count: int, seed: int = 7, patients: int = 50, start: datetime | None = None) -> list[bytes]:
    """`count` messages (about one admission for three lab results) for `patients` synthetic patients."""
    rng = random.Random(seed)
    people = [patient(rng, i) for i in range(patients)]
    when = start or datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    out: list[bytes] = []
    run = f"{rng.randrange(16**6):06x}"
    for n in range(count):
        p = people[n % patients]
        control_id = f"S{run}{n:07d}"
        visit = f"V{p.ipp}"
        when += timedelta(seconds=1)
        out.append(
            adt_a01(p, control_id, when, visit) if n % 4 == 0 else oru_r01(rng, p, control_id, when, visit)
        )
    return out


# --- FHIR R4 resources (the FHIR doors' tests and benchmarks) ----------------------------------------


def fhir_patient(p: SyntheticPatient, version: str = "1") -> dict[str, Any]:
    """A FR Core-like Patient with the INS (test OID) and the IPP; qualified identities say so."""
    return {
        "resourceType": "Patient",
        "id": f"pat-{p.ipp}",
        "meta": {"versionId": version},
        "identifier": [
            {"system": f"urn:oid:{HOSPITAL_OID}", "value": p.ipp},
            {"system": f"urn:oid:{INS_TEST_OID}", "value": p.nir},
        ],
        "name": [{"family": p.family, "given": [p.given]}],
        "gender": "male" if p.sex == "M" else "female",
        "birthDate": f"{p.birth[:4]}-{p.birth[4:6]}-{p.birth[6:]}",
    }


def fhir_observation(
    rng: random.Random, p: SyntheticPatient, obs_id: str, when: datetime, version: str | None = "1"
) -> dict[str, Any]:
    """A lab result (LOINC, UCUM) about ``p``, referring to it by IPP identifier."""
    code, display, unit, low, high = rng.choice(LAB)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"identifier": {"system": f"urn:oid:{HOSPITAL_OID}", "value": p.ipp}},
        "effectiveDateTime": when.astimezone(UTC).isoformat(),
        "valueQuantity": {
            "value": round(rng.uniform(low * 0.8, high * 1.2), 2),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit.replace("µ", "u"),
        },
    }
    if version is not None:
        resource["meta"] = {"versionId": version}
    return resource


def fhir_bundle(bundle_type: str, resources: list[dict[str, Any]], method: str = "POST") -> dict[str, Any]:
    """A batch/transaction (entries with requests) or collection Bundle around ``resources``."""
    entries: list[dict[str, Any]] = []
    for r in resources:
        entry: dict[str, Any] = {"resource": r}
        if bundle_type in ("batch", "transaction"):
            url = r["resourceType"] if method == "POST" else f"{r['resourceType']}/{r['id']}"
            entry["request"] = {"method": method, "url": url}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}


CIM10 = [
    ("I21.9", "Infarctus aigu du myocarde, sans précision"),
    ("E11.9", "Diabète sucré de type 2, sans complication"),
    ("J18.9", "Pneumopathie, sans précision"),
    ("C50.9", "Tumeur maligne du sein, sans précision"),
]


def _subject(p: SyntheticPatient) -> dict[str, Any]:
    """The patient by IPP identifier, as the HL7 side names it: both feeds land on one patient key."""
    return {"identifier": {"system": f"urn:oid:{HOSPITAL_OID}", "value": p.ipp}}


def fhir_condition(rng: random.Random, p: SyntheticPatient, cond_id: str, when: datetime) -> dict[str, Any]:
    """A CIM-10 diagnosis about ``p`` (FR terminology server system, as the EDS sends it)."""
    code, display = rng.choice(CIM10)
    return {
        "resourceType": "Condition",
        "id": cond_id,
        "meta": {"versionId": "1"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {
            "coding": [
                {
                    "system": "https://smt.esante.gouv.fr/terminologie-cim-10/",
                    "code": code,
                    "display": display,
                }
            ]
        },
        "subject": _subject(p),
        "recordedDate": when.astimezone(UTC).isoformat(),
    }


def fhir_encounter(p: SyntheticPatient, enc_id: str, when: datetime, finished: bool) -> dict[str, Any]:
    """An inpatient stay of ``p`` (visit number under the hospital OID), in progress or finished."""
    period = {"start": (when - timedelta(days=2)).astimezone(UTC).isoformat()}
    if finished:
        period["end"] = when.astimezone(UTC).isoformat()
    return {
        "resourceType": "Encounter",
        "id": enc_id,
        "meta": {"versionId": "1"},
        "identifier": [{"system": f"urn:oid:{HOSPITAL_OID}", "value": f"VN-{enc_id}"}],
        "status": "finished" if finished else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": _subject(p),
        "period": period,
    }
