"""What the fuzz tests throw at the hub, and what must hold whatever they throw.

Each :class:`Target` pairs a hypothesis strategy (mutations of the seeds in ``tests/corpus`` and
``tests/golden``, so most inputs are *almost* valid, where parsers break) with a check. The checks are
the issue's pass rule: no exception outside the project's error types, no ACK that fails to parse or
echoes the wrong MSH-10, no 5xx, and no "accepted" for input the next stage will always refuse.

Used two ways: ``tests/fuzz/test_fuzz.py`` runs every target a bounded number of times in CI, and
``make fuzz`` (``python -m tests.fuzz``) runs them for minutes and writes what it finds to
``tests/fuzz/found/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from connectors.fhir_rest import intake as fhir_intake
from connectors.mllp.framing import Frame, FrameDecoder, FrameError, encode_frame
from connectors.mllp.intake import Accepted, IntakePolicy, assess
from formats.devices.templates import PayloadError, load_templates, read_payload
from formats.hl7 import er7
from formats.reasons import ReasonCode, Refused
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import Rejection, run_mapper

ROOT = Path(__file__).resolve().parents[1]
HL7_SEEDS = sorted(p.read_bytes() for p in (ROOT / "corpus" / "hl7").glob("*.hl7")) + sorted(
    p.read_bytes() for p in (ROOT / "golden" / "hl7").glob("*.hl7")
)
FHIR_SEEDS = [
    json.loads(p.read_text("utf-8"))
    for p in sorted((ROOT / "golden" / "fhir").glob("*.json"))
    if not p.name.endswith(".expected.json")
]
DEVICE_SEEDS = {
    p.stem: json.loads(p.read_text("utf-8")) for p in sorted((ROOT / "corpus" / "devices").glob("*.json"))
}
TEMPLATES = load_templates()
OPTIONS = MappingOptions()
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

# Reasons the normalizer gives whatever the message's values: a door that accepted such a message told
# its sender "stored" for something that can only ever be a dead letter.
ALWAYS_REFUSED = frozenset(
    {
        ReasonCode.UNPARSABLE,
        ReasonCode.UNSUPPORTED_EVENT,
        ReasonCode.UNSUPPORTED_RESOURCE,
        ReasonCode.INVALID_JSON,
    }
)
# Bytes that break parsers: delimiters, framing, line ends, NUL, non-ASCII, digits and signs.
INTERESTING = b"|^~\\&\r\n\x0b\x1c\x00\xe9\xc3\xa90123456789+-.:TZ#%MSHPIDOBXBHS "


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    ci_examples: int  # per CI run; the whole suite stays under ~60 s


TRIED: Counter[str] = Counter()


# --- mutations --------------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 5))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == 0 and data:  # replace a byte
            data[at] = draw(st.sampled_from(INTERESTING))
        elif op == 1:  # insert bytes
            data[at:at] = (
                draw(st.binary(min_size=1, max_size=4))
                if draw(st.booleans())
                else bytes([draw(st.sampled_from(INTERESTING))])
            )
        elif op == 2 and data:  # delete a run
            del data[at : at + draw(st.integers(1, 40))]
        elif op == 3 and data:  # duplicate a segment
            start = data.rfind(b"\r", 0, at) + 1
            end = data.find(b"\r", at)
            end = len(data) if end < 0 else end + 1
            data[end:end] = data[start:end]
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # a long field
            data[at:at] = b"9" * draw(st.sampled_from([20, 400, 5000]))
    return bytes(data)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            " ",
            "x",
            "0001-01-01",
            "9999-12-31T23:59:59+14:00",
            "2026-13-45",
            "urn:uuid:1",
            "Patient/1",
            "#p1",
            "１２３",
            "Ã©",
            "\x00",
            "a" * 300,
        ]
    ),
    st.just([]),
    st.just({}),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, seeds: list[Any]) -> Any:
    doc = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.integers(0, 3))
        if op == 0:
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op == 1:
            parent[path[-1]] = draw(VALUES)
        elif op == 2:  # wrap: a value where a list is expected, or the reverse
            parent[path[-1]] = [parent[path[-1]]]
        else:  # nest deeply
            nested: Any = parent[path[-1]]
            for _ in range(draw(st.sampled_from([5, 200]))):  # deeper: DEEP, as text (no recursion here)
                nested = {"x": nested}
            parent[path[-1]] = nested
    return doc


# JSON nested far deeper than any parser's recursion limit, with the resourceType the door reads first.
DEEP = st.sampled_from(["Observation", "Bundle", "Patient"]).flatmap(
    lambda rtype: st.integers(1_000, 200_000).map(
        lambda depth: (
            f'{{"resourceType":"{rtype}","type":"batch","x":' + "[" * depth + "]" * depth + "}"
        ).encode()
    )
)


def _dumps(doc: Any) -> bytes:
    if isinstance(doc, bytes):
        return doc
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return b"{}"


# --- checks -----------------------------------------------------------------------------------------


def check_framer(chunks: list[bytes]) -> None:
    """Any stream: frames and errors only; framing the frames again gives them back unchanged."""
    TRIED["framer"] += 1
    decoder = FrameDecoder(4096)
    frames = [e for c in chunks for e in decoder.feed(c)] + decoder.close()
    for event in frames:
        assert isinstance(event, Frame | FrameError)
        if isinstance(event, Frame):
            assert b"\x0b" not in event.payload[:1]
            again = [e for e in FrameDecoder(4096).feed(encode_frame(event.payload)) if isinstance(e, Frame)]
            assert [e.payload for e in again] == [event.payload] or b"\x1c" in event.payload


def check_mllp_door(payload: bytes) -> None:
    """Tokenizer + header reader + ACK builder through the door's handler (Kafka faked)."""
    TRIED["mllp_door"] += 1
    from tests.unit.test_mllp_handler_fuzz import PEER, make_server

    server, producer, _ = make_server()
    reply = asyncio.run(server.handle_frame(payload, PEER))
    events = FrameDecoder().feed(reply)
    assert reply.count(b"\x0b") == reply.count(b"\x1c") == len(events), "one frame per answer"
    outcome = assess(payload, IntakePolicy())
    for event in events:
        assert isinstance(event, Frame)
        codec = outcome.header.codec if outcome.header.codec else "latin-1"
        ack = er7.parse(event.payload.decode(codec))
        codes = [s.value(1) for s in ack.segments_named("MSA")]
        assert codes and all(c in ("AA", "AE", "AR", "CA", "CE", "CR") for c in codes)
        if isinstance(outcome, Accepted) and not ack.segments[0].name.endswith("HS"):
            assert ack.segments_named("MSA")[0].value(2, 1, 1) == (outcome.header.control_id or None)
    if isinstance(outcome, Accepted) and any(t != "ack" for t, _, _ in producer.sent):
        check_hl7_normalizer(outcome.raw, accepted=True)


def check_hl7_normalizer(payload: bytes, accepted: bool = False) -> None:
    TRIED["hl7_normalizer"] += 1
    ctx = RawContext("r" * 64, "hl7v2", "mllp", "CHU-FUZZ", "APP", "C1", NOW)
    outcome = assess(payload, IntakePolicy())
    if not isinstance(outcome, Accepted):
        return
    try:
        map_hl7(outcome.decoded.text, ctx, OPTIONS)
    except Refused as exc:
        if accepted:
            assert exc.code not in ALWAYS_REFUSED, f"acknowledged, then always refused: {exc.code}"


def check_fhir_normalizer(doc: Any) -> None:
    TRIED["fhir_normalizer"] += 1
    ctx = RawContext("r" * 64, "fhir", "fhir_rest", "CHU-FUZZ", "EDS", "m1", NOW)
    with contextlib.suppress(Refused):  # MappingError is one; run_mapper dead-letters any Refused
        map_fhir(_dumps(doc), ctx, OPTIONS)


# Refusals the FHIR normalizer may still give for what the FHIR door answered 2xx: none. The door calls
# the mapper's own checks (formats/fhir: validate.py, admission.py) with the same inputs (issue #18);
# whatever it cannot decide would be named here, with why. A partial mapping (an INS left out next to
# an IPP) is not a refusal: the events are written, the part left out is flagged beside them.
FHIR_DOOR_RESIDUAL: frozenset[ReasonCode] = frozenset()


def check_fhir_door(doc: Any) -> None:
    """The door's pure checks: a Refusal with a 4xx, or items the normalizer maps (issue #18)."""
    TRIED["fhir_door"] += 1
    body = _dumps(doc)
    rtype = doc.get("resourceType") if isinstance(doc, dict) else "Bundle" if b'"Bundle"' in body else None
    try:
        if rtype == "Bundle":
            plan = fhir_intake.bundle_plan(body)
            items = plan.items
        else:
            items = [fhir_intake.resource_item(body, rtype if isinstance(rtype, str) else "Observation")]
    except fhir_intake.Refusal as refusal:
        assert 400 <= refusal.status < 500
        return
    ctx = RawContext("r" * 64, "fhir", "fhir_rest", "CHU-FUZZ", "EDS", "m1", NOW)
    for item in items:
        outcome = run_mapper(map_fhir, item.payload, ctx, OPTIONS)  # nothing_to_map included
        if isinstance(outcome, Rejection):
            assert outcome.reason_code in FHIR_DOOR_RESIDUAL, (
                f"answered 2xx, then refused: {outcome.reason_code} @ {outcome.location}"
            )


def check_device_templates(case: tuple[str, Any]) -> None:
    TRIED["device_templates"] += 1
    name, doc = case
    with contextlib.suppress(PayloadError, Refused):
        read_payload(TEMPLATES[name], _dumps(doc))


TARGETS = [
    Target(
        "framer",
        st.lists(st.one_of(st.binary(max_size=200), mutated_bytes(HL7_SEEDS).map(encode_frame)), max_size=6),
        check_framer,
        900,
    ),
    Target("mllp_door", mutated_bytes(HL7_SEEDS), check_mllp_door, 1200),
    Target("hl7_normalizer", mutated_bytes(HL7_SEEDS), check_hl7_normalizer, 1200),
    Target("fhir_normalizer", st.one_of(mutated_json(FHIR_SEEDS), DEEP), check_fhir_normalizer, 900),
    Target("fhir_door", st.one_of(mutated_json(FHIR_SEEDS), DEEP), check_fhir_door, 900),
    Target(
        "device_templates",
        st.sampled_from(sorted(DEVICE_SEEDS)).flatmap(
            lambda n: st.one_of(mutated_json([DEVICE_SEEDS[n]]), DEEP).map(lambda d: (n, d))
        ),
        check_device_templates,
        900,
    ),
]
