"""Whatever arrives on ingest.fhir.raw, the FHIR mapper answers: events that fit their Avro schema, or a
precise rejection — never an exception, never a "bug" rejection, never an input value in a reason."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.registry import load_schema, parse_schema
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.options import MappingOptions
from streams.normalize.result import CANONICAL_KINDS, Rejection, run_mapper

GOLDEN_FHIR = Path(__file__).resolve().parent.parent / "golden" / "fhir"
CASES = sorted(p for p in GOLDEN_FHIR.glob("*.json") if ".expected." not in p.name)
GOLDEN_INPUTS = [json.loads(p.read_text(encoding="utf-8")) for p in CASES]
SCHEMAS = {kind: parse_schema(load_schema(f"canonical/{kind}")) for kind in CANONICAL_KINDS}
CTX = RawContext(
    raw_id="raw-props",
    protocol="fhir",
    connector="fhir_rest",
    facility="CHU-EXEMPLE",
    application="EDS-FHIR",
    message_id="msg-props",
    received_at=datetime(2026, 3, 16, 9, 0, tzinfo=UTC),
    topic="ingest.fhir.raw",
)
OPTIONS = MappingOptions()
CANARY = "Canari-Œ7f3a"
PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Element names the mapper reads, so random objects often look like the real thing.
FHIR_KEYS = [
    "resourceType", "id", "meta", "versionId", "status", "code", "coding", "system", "display", "subject",
    "reference", "identifier", "value", "unit", "valueQuantity", "valueString", "valueBoolean",
    "valueCodeableConcept", "effectiveDateTime", "effectivePeriod", "start", "end", "component", "entry",
    "resource", "fullUrl", "request", "method", "url", "type", "extension", "birthDate", "gender", "name",
    "family", "given", "period", "location", "result", "performer", "referenceRange", "low", "high",
]  # fmt: skip
RESOURCE_TYPES = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "Procedure",
    "DiagnosticReport",
    "Bundle",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["final", "Patient/p1", "urn:uuid:x", "2026-03-15", "2026-03-15T08:30:00Z", CANARY])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FHIR_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def check(payload: bytes) -> Rejection | None:
    outcome = run_mapper(map_fhir, payload, CTX, OPTIONS)
    if isinstance(outcome, Rejection):
        assert outcome.reason_code != "mapping_failed", outcome
        for text in (outcome.reason, outcome.location, outcome.rule):
            assert CANARY not in text and "7f3a" not in text, outcome
        return outcome
    for event in outcome:
        fastavro.validation.validate(event.record, SCHEMAS[event.kind], raise_errors=True, strict=True)
        assert event.key == event.record["patient"]["key"]
    return None


@PROPS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(payload):
    check(payload)


@PROPS
@given(json_values)
def test_arbitrary_json(value):
    check(json.dumps(value).encode())


@PROPS
@given(st.sampled_from(RESOURCE_TYPES), st.dictionaries(st.sampled_from(FHIR_KEYS), json_values, max_size=8))
def test_arbitrary_resources(resource_type, body):
    check(json.dumps({**body, "resourceType": resource_type}).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_paths(value, (*prefix, i)))
    return found


@st.composite
def mutated_resources(draw: st.DrawFn) -> Any:
    """A golden input with a few random edits: removals, replacements, canary values, canary keys."""
    doc = copy.deepcopy(draw(st.sampled_from(GOLDEN_INPUTS)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["delete", "replace", "canary", "canary_key", "duplicate"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(json_values)
        elif action == "canary":
            parent[last] = draw(
                st.sampled_from([CANARY, f"{CANARY}/x", f"Patient/{CANARY}", [CANARY], {CANARY: 1}])
            )
        elif action == "canary_key" and isinstance(parent, dict):
            parent[CANARY] = parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_resources())
def test_mutated_valid_resources(doc):
    check(json.dumps(doc, ensure_ascii=False).encode())


@PROPS
@given(st.sampled_from(GOLDEN_INPUTS), st.integers(min_value=0, max_value=10_000), st.binary(max_size=3))
def test_corrupted_bytes_of_valid_resources(doc, position, noise):
    payload = json.dumps(doc, ensure_ascii=False).encode()
    cut = position % (len(payload) + 1)
    check(payload[:cut] + noise + payload[cut + len(noise) :])
