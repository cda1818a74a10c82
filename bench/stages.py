"""Stream stages on one core, without Kafka: normalization (HL7 v2, FHIR R4) and pseudonymization.

A worker's ceiling is what its pure work costs: bytes of a raw record in, encoded records out. Kafka and
the stage shell add their own overhead on top (measured by the end-to-end figures); these rows say how far the
mapping code itself is from the bare tokenize+encode ceiling measured beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import Options, register
from bench.report import SuiteResult, Table, Target, fmt_rate, fmt_ratio, fmt_us

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
KEYS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "keys" / "test-keys.json"


def _rate(work: Callable[[], int], seconds: float) -> tuple[float, float]:
    """(items per second, seconds per item): best of 3 rounds of at least `seconds` each."""
    best = 0.0
    for _ in range(3):
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            done += work()
        best = max(best, done / (time.perf_counter() - started))
    return best, 1 / best if best else float("nan")


def parse_encode_ceiling(seconds: float) -> float:
    """HL7 msgs/s on one core for the bare work every message costs: tokenize each segment, encode one
    canonical Observation. The ceiling of normalization, and (shared) of the end-to-end figures."""
    from affluent.sim.synthetic import messages
    from formats.hl7 import er7
    from schemas.fastwriter import compile_writer
    from schemas.registry import load_schema
    from streams.normalize.envelope import RawContext
    from streams.normalize.hl7 import map_hl7
    from streams.normalize.options import MappingOptions

    ctx = RawContext("raw", "hl7v2", "mllp", "CHU", "PAS", "M1", datetime(2026, 3, 1, tzinfo=UTC), "t", 0, 0)
    write = compile_writer(json.loads(load_schema("canonical/observation")))
    texts = [m.decode("iso8859-15") for m in messages(200, seed=11)]
    sample = next(e.record for e in map_hl7(texts[1], ctx, MappingOptions()) if e.kind == "observation")

    def ceiling() -> int:
        for text in texts:
            msg = er7.parse(text)
            for seg in msg.segments:
                seg.value(3)
            write(sample)
        return len(texts)

    return _rate(ceiling, seconds)[0]


@register("stages")
def stages(options: Options) -> SuiteResult:
    from affluent.sim.synthetic import messages
    from schemas.fastwriter import compile_writer
    from schemas.registry import load_schema
    from streams.normalize.envelope import RawContext
    from streams.normalize.fhir import map_fhir
    from streams.normalize.hl7 import map_hl7
    from streams.normalize.options import MappingOptions
    from streams.normalize.result import CANONICAL_KINDS
    from streams.pseudonymize.keys import file_provider
    from streams.pseudonymize.policy import load_policy
    from streams.pseudonymize.transform import Feed

    started = time.perf_counter()
    seconds = options.seconds(2.0, 0.5)
    ctx = RawContext("raw", "hl7v2", "mllp", "CHU", "PAS", "M1", datetime(2026, 3, 1, tzinfo=UTC), "t", 0, 0)
    opts = MappingOptions()
    writers = {kind: compile_writer(json.loads(load_schema(f"canonical/{kind}"))) for kind in CANONICAL_KINDS}
    hl7_texts = [m.decode("iso8859-15") for m in messages(200, seed=11)]  # 1 ADT : 3 ORU, like the demo
    fhir_payloads = [
        p.read_bytes()
        for p in sorted((GOLDEN / "fhir").glob("*.json"))
        if not p.name.endswith(".expected.json")
        and json.loads(p.read_bytes()).get("resourceType") in ("Observation", "Patient")
    ]

    def hl7_map_only() -> int:
        for text in hl7_texts:
            map_hl7(text, ctx, opts)
        return len(hl7_texts)

    def hl7_map_encode() -> int:
        for text in hl7_texts:
            for event in map_hl7(text, ctx, opts):
                writers[event.kind](event.record)
        return len(hl7_texts)

    def fhir_map_encode() -> int:
        n = 0
        for payload in fhir_payloads:
            for event in map_fhir(payload, ctx, opts):
                writers[event.kind](event.record)
                n += 1
        return n

    keys = file_provider(KEYS)
    feeds = [Feed(load_policy(name), keys) for name in ("hdh", "inca")]
    canonical: list[tuple[str, dict[str, Any]]] = [
        (e.kind, e.record) for text in hl7_texts for e in map_hl7(text, ctx, opts)
    ]

    def pseudonymize() -> int:
        for kind, record in canonical:
            for feed in feeds:
                national = feed.apply(kind, record)
                if national is not None:
                    feed.encode(national)
        return len(canonical)

    ceiling_rate = parse_encode_ceiling(seconds)
    ceiling_s = 1 / ceiling_rate
    rows: list[list[str]] = [
        [
            "ceiling: tokenize every segment + encode one Avro record",
            "HL7 msgs",
            fmt_rate(ceiling_rate),
            fmt_us(ceiling_s),
            "1.00×",
        ]
    ]
    figures: dict[str, float] = {}
    for label, unit, work in (
        ("HL7 v2 → canonical (map only)", "HL7 msgs", hl7_map_only),
        ("HL7 v2 → canonical + Avro encode", "HL7 msgs", hl7_map_encode),
        ("FHIR R4 → canonical (validate, map, encode)", "resources", fhir_map_encode),
        ("canonical → national hdh + inca (policy, pseudonyms, encode)", "canonical records", pseudonymize),
    ):
        rate, per = _rate(work, seconds)
        figures[label] = rate
        rows.append(
            [
                label,
                unit,
                fmt_rate(rate),
                fmt_us(per),
                fmt_ratio(rate / ceiling_rate) if unit == "HL7 msgs" else "",
            ]
        )
    events_per_msg = len(canonical) / len(hl7_texts)
    hl7 = figures["HL7 v2 → canonical + Avro encode"]
    fhir = figures["FHIR R4 → canonical (validate, map, encode)"]
    pseudo = figures["canonical → national hdh + inca (policy, pseudonyms, encode)"]
    return SuiteResult(
        name="stages",
        title="Stream stages on one core (pure work, no Kafka)",
        tables=[Table(["stage", "unit", "per second", "per unit", "vs ceiling"], rows)],
        how_measured=(
            "One process, one thread. HL7: 200 synthetic messages from `affluent.sim.synthetic` "
            f"(1 ADT^A01 for 3 ORU^R01 with 3 results each; {events_per_msg:.2f} canonical events per "
            "message), decoded "
            "text in, canonical records encoded with the compiled Avro writer out. FHIR: the golden "
            "Observation and Patient inputs of `tests/golden/fhir`, validated with fhir.resources (R4B), "
            "mapped and encoded. Pseudonymization: the canonical records of the HL7 run through both "
            "shipped policies (hdh, inca) with the test keys, national records encoded. Each row loops "
            "for at least the stated seconds, best of 3. The ceiling tokenizes every segment of each "
            "message with the ER7 tokenizer and encodes one canonical Observation per message."
        ),
        targets=[
            Target(
                "HL7 normalization, one core", "≥ 20,000 msgs/s", f"{fmt_rate(hl7)} msgs/s", hl7 >= 20_000
            ),
            Target(
                "FHIR normalization, one core",
                "≥ 4,000 resources/s",
                f"{fmt_rate(fhir)} resources/s",
                fhir >= 4_000,
            ),
            Target(
                "pseudonymization, one core",
                "≥ 30,000 records/s",
                f"{fmt_rate(pseudo)} records/s",
                pseudo >= 30_000,
            ),
        ],
        seconds=time.perf_counter() - started,
    )
