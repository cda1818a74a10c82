"""The synthetic hospital's FHIR R4 client: resources and transaction Bundles to the FHIR REST door.

The hospital's EDS posts single resources (Observation, Condition, Encounter, Patient) and transaction
Bundles (Patient + Encounter + Condition of one stay) about the same synthetic patients the HL7 side
talks about (subject by IPP identifier under the hospital OID). A small share is malformed the way
FHIR clients get it wrong — truncated JSON, a required element missing, one bad entry in a
transaction — and the door must refuse each with a 4xx OperationOutcome (counted as refused by the
door, never stored).

The raw id of a message is computed with the door's own planning functions
(:mod:`connectors.fhir_rest.intake`) and raw id rule, for the sender the bearer token names, so that the
ledger knows before sending which raw record the door will write.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from affluent.sim.synthetic import (
    SyntheticPatient,
    fhir_bundle,
    fhir_condition,
    fhir_encounter,
    fhir_observation,
    fhir_patient,
)
from affluent.sim.types import Answer, HttpLane, Outbound

CHANNEL: Final = "fhir"
# What the EDS posts (weights): mostly results, some diagnoses and stays, a few identity updates.
KINDS: Final = (
    ("Observation", 55),
    ("Condition", 12),
    ("Encounter", 10),
    ("Patient", 5),
    ("transaction", 18),
)
MALFORMED: Final = ("not_json", "missing_status", "bad_transaction_entry")


@dataclass(frozen=True, slots=True)
class FhirTarget:
    """Where the FHIR door listens and who the hospital is to it (the sender its bearer token names)."""

    base_url: str  # e.g. http://127.0.0.1:8080/fhir
    token: str
    sender: str = "CHU-SYNTH|EDS-SYNTH"  # facility|application, as in fhir_rest.token_sha256
    lanes: int = 4  # concurrent clients (one patient always on the same one)


@dataclass(frozen=True, slots=True)
class FhirMessage:
    path: str  # "" (a Bundle to the base URL) or the resource type
    body: bytes
    label: str


def _dump(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def fhir_message(
    rng: random.Random, p: SyntheticPatient, name: str, when: datetime, malformed: str | None = None
) -> FhirMessage:
    """One request of the EDS about ``p``; ``name`` makes its resource ids unique in the run."""
    if malformed == "not_json":
        return FhirMessage(
            "Observation", _dump(fhir_observation(rng, p, f"obs-{name}", when))[:-7], "malformed:not_json"
        )
    if malformed == "missing_status":
        observation = fhir_observation(rng, p, f"obs-{name}", when)
        del observation["status"]
        return FhirMessage("Observation", _dump(observation), "malformed:missing_status")
    if malformed == "bad_transaction_entry":
        broken = fhir_observation(rng, p, f"obs-{name}", when)
        broken["valueQuantity"]["value"] = "cent vingt"
        bundle = fhir_bundle("transaction", [fhir_condition(rng, p, f"cond-{name}", when), broken])
        return FhirMessage("", _dump(bundle), "malformed:bad_transaction_entry")
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    if kind == "Observation":
        return FhirMessage(kind, _dump(fhir_observation(rng, p, f"obs-{name}", when)), kind)
    if kind == "Condition":
        return FhirMessage(kind, _dump(fhir_condition(rng, p, f"cond-{name}", when)), kind)
    if kind == "Encounter":
        return FhirMessage(kind, _dump(fhir_encounter(p, f"enc-{name}", when, rng.random() < 0.5)), kind)
    if kind == "Patient":
        return FhirMessage(kind, _dump(fhir_patient(p, version=name)), kind)
    stay = [fhir_patient(p, version=name), fhir_encounter(p, f"enc-{name}", when, True)]
    bundle = fhir_bundle("transaction", [*stay, fhir_condition(rng, p, f"cond-{name}", when)])
    bundle["id"], bundle["meta"] = f"tx-{name}", {"versionId": "1"}
    return FhirMessage("", _dump(bundle), "Bundle/transaction")


def fhir_outbound(message: FhirMessage, lane: int, sender: str) -> Outbound:
    return Outbound(CHANNEL, lane, message.body, fhir_raw_id(message, sender), message.label, message.path)


def fhir_raw_id(message: FhirMessage, sender: str) -> str | None:
    """The raw id the door stores ``message`` under, or None when the door refuses it (4xx)."""
    from connectors.fhir_rest.intake import Refusal, bundle_plan, resource_item
    from connectors.raw import raw_id_of

    facility, application = sender.split("|", 1)
    try:
        if message.path:
            item = resource_item(message.body, message.path)
        else:
            [item] = bundle_plan(message.body).items  # a transaction: one raw record, all or nothing
    except Refusal:
        return None
    return raw_id_of("fhir", facility, application, item.effective_message_id)


class FhirChannel:
    """One FHIR client (HTTP keep-alive); acknowledged = 200/201, after the door's Kafka delivery report.

    A refusal is recorded by its status and whether the body was an OperationOutcome, since a refusal
    without one would itself be a defect of the door."""

    def __init__(self, target: FhirTarget) -> None:
        self.target = target
        self.http = HttpLane(target.token, "application/fhir+json")

    @classmethod
    async def open(cls, target: FhirTarget) -> FhirChannel:
        return cls(target)

    async def send(self, message: Outbound) -> Answer:
        url = f"{self.target.base_url.rstrip('/')}/{message.target}".rstrip("/")
        status, body = await self.http.post(url, message.payload)
        if status in (200, 201):
            return Answer(f"HTTP {status}", True)
        return Answer(f"HTTP {status} {outcome_kind(body)}", False)

    async def close(self) -> None:
        await self.http.close()


def outcome_kind(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "(no OperationOutcome)"
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        return "OperationOutcome"
    return "(no OperationOutcome)"
