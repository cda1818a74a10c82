"""Whatever a sender posts, the mappers refuse with a reason code; no other exception may escape.

The fuzzing behind issue #18 found ValueError (identity parsing), OverflowError (extreme dates, huge
integers) and TypeError (JSON of the wrong type) escaping the normalizers and the device templates: the
stage turned them into ``mapping_failed`` "bug" dead letters, and the device door into a 500 with a
traceback. These properties feed golden inputs with structurally wrong or extreme values to each of them
and accept only the project's refusals: MappingError / Refused (HL7, FHIR) and PayloadError (devices).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats.devices.templates import PayloadError, load_templates, read_payload
from formats.reasons import ReasonCode, Refused
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import Mapped
from tests.support.devices import CORPUS, SHAPES
from tests.support.golden import hl7_cases, hl7_context, hl7_text

OPTIONS = MappingOptions()
PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HL7_GOLDEN = {case: hl7_text(case) for case in hl7_cases()}
FHIR_DIR = Path(__file__).resolve().parent.parent / "golden" / "fhir"
FHIR_GOLDEN = [
    json.loads(p.read_text(encoding="utf-8"))
    for p in sorted(FHIR_DIR.glob("*.json"))
    if ".expected." not in p.name
]
FHIR_CTX = RawContext(
    "raw-props", "fhir", "fhir_rest", "CHU-EXEMPLE", "EDS", "m-props", datetime(2026, 3, 16, tzinfo=UTC)
)
TEMPLATES = load_templates()
DEVICE_SAMPLES = {shape: json.loads((CORPUS / f"{shape}.json").read_bytes()) for shape in SHAPES}

FULL_WIDTH = "２８５０３７５１２３４５６８８"
# What the fuzzing found, and its neighbours: dates at datetime's limits, non-ASCII digits, huge numbers.
HL7_HOSTILE = st.sampled_from(
    [
        "00010101000000+1400",
        "00010101",
        "0001",
        "99991231235959-1200",
        "9999123123",
        "99991231235959.999999-1200",
        "２０２４０３１５",
        FULL_WIDTH,
        "2850375123456²8",
        "1",
        "1.0.1",
        "1.1.1.1",
        "1" + "0" * 400,
        "1e400",
        "",
        '""',
    ]
)
JSON_HOSTILE = st.sampled_from(
    [
        0,
        -1,
        10**400,
        1e308,
        -1e308,
        True,
        None,
        "",
        "x",
        [],
        ["x"],
        [{"x": 1}],
        {},
        {"coding": "x"},
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-12:00",
        "9999-12-31",
        "0001",
        FULL_WIDTH,
        "２０２４-03-15",
    ]
)


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
def json_mutations(draw: st.DrawFn, documents: list[Any]) -> Any:
    """A golden document with one to three nodes replaced by a value of another type or an extreme one."""
    doc = copy.deepcopy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = copy.deepcopy(draw(JSON_HOSTILE))
    return doc


@st.composite
def hl7_mutations(draw: st.DrawFn) -> tuple[str, str]:
    case = draw(st.sampled_from(sorted(HL7_GOLDEN)))
    segments = [s for s in HL7_GOLDEN[case].split("\r") if s]
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(1, len(segments) - 1))
        fields = segments[index].split(segments[0][3])
        position = draw(st.integers(1, len(fields) + 1))
        fields.extend([""] * (position + 1 - len(fields)))
        value = draw(HL7_HOSTILE)
        components = fields[position].split(segments[0][4])
        if len(components) > 1 and draw(st.booleans()):
            components[draw(st.integers(0, len(components) - 1))] = value
            value = segments[0][4].join(components)
        fields[position] = value
        segments[index] = segments[0][3].join(fields)
    return case, "\r".join(segments) + "\r"


def _check_mapped(events: Mapped) -> None:
    for rejection in events.dropped:
        assert isinstance(rejection.reason_code, ReasonCode)
    for event in events:
        assert event.key and not event.key.endswith("@")


@PROPS
@given(hl7_mutations())
def test_hl7_mapper_raises_only_mapping_errors(mutated: tuple[str, str]) -> None:
    case, text = mutated
    try:
        events = map_hl7(text, hl7_context(case, HL7_GOLDEN[case]), OPTIONS)
    except Refused as exc:  # MappingError is a Refused
        assert isinstance(exc.code, ReasonCode)
        return
    _check_mapped(events)


@PROPS
@given(json_mutations(FHIR_GOLDEN))
def test_fhir_mapper_raises_only_refusals(doc: Any) -> None:
    try:
        events = map_fhir(json.dumps(doc, ensure_ascii=False).encode(), FHIR_CTX, OPTIONS)
    except Refused as exc:
        assert isinstance(exc.code, ReasonCode)
        return
    _check_mapped(events)


@PROPS
@given(st.sampled_from(SHAPES), st.data())
def test_device_templates_raise_only_payload_errors(shape: str, data: st.DataObject) -> None:
    doc = data.draw(json_mutations([DEVICE_SAMPLES[shape]]))
    try:
        read_payload(TEMPLATES[shape], json.dumps(doc).encode())
    except PayloadError as exc:
        assert isinstance(exc.code, ReasonCode)
