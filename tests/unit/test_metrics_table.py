"""docs/metrics.md is the one table of exported metrics: it must match what each process registers.

Each process's registry is built the way the process builds it (same metric classes, same shared
helpers), then compared with the table: same names, types and label names, and the table's process
column right. Every ``affluent_…`` name declared anywhere in the code must be in the table too, so a
metric added in a new module cannot skip it. Label values produced from hostile or identifying input
must not look like personal data.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from affluent.core.metrics import (
    MAX_SENDERS,
    NIR_LIKE,
    SenderActivity,
    consumer_lag,
    rebalances,
    sender_label,
)
from affluent.run import RunMetrics
from affluent.sim import synthetic
from connectors.devices.metrics import DeviceMetrics
from connectors.fhir_poll.puller import PullMetrics
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.mllp.metrics import MllpMetrics
from streams.cohort.stage import CohortMetrics
from streams.normalize.stage import NormalizeMetrics
from streams.opposition.service import OppositionMetrics
from streams.pseudonymize.stage import PseudonymizeMetrics
from tests.support.observability import ROOT, metric_table

CODE_DIRS = ("affluent", "connectors", "streams")


def mllp(registry: CollectorRegistry) -> None:
    MllpMetrics(registry, frozenset({"ADT", "ORU"}))


def normalize(registry: CollectorRegistry) -> None:
    NormalizeMetrics(registry)
    consumer_lag(registry)
    rebalances(registry)


def pseudonymize(registry: CollectorRegistry) -> None:
    PseudonymizeMetrics(registry)
    consumer_lag(registry)
    rebalances(registry)


def opposition(registry: CollectorRegistry) -> None:
    OppositionMetrics(registry)


def fhir(registry: CollectorRegistry) -> None:
    FhirRestMetrics(registry)


def pull(registry: CollectorRegistry) -> None:
    PullMetrics(registry)


def devices(registry: CollectorRegistry) -> None:
    DeviceMetrics(registry)


def run(registry: CollectorRegistry) -> None:
    RunMetrics.create(registry)


def cohort(registry: CollectorRegistry) -> None:
    CohortMetrics(registry)


PROCESSES: dict[str, Callable[[CollectorRegistry], None]] = {
    "mllp": mllp,
    "normalize": normalize,
    "pseudonymize": pseudonymize,
    "opposition": opposition,
    "fhir": fhir,
    "pull": pull,
    "devices": devices,
    "run": run,
    "cohort": cohort,
}


def exported(registry: CollectorRegistry) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exposed name → (type, label names), read from the registry's collectors (test-only introspection:
    a labelled metric with no child yet exports no sample, so its label names are not in the text)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector in registry._collector_to_names:
        kind = str(collector._type)  # type: ignore[attr-defined]
        name = str(collector._name)  # type: ignore[attr-defined]
        labels = tuple(sorted(collector._labelnames))  # type: ignore[attr-defined]
        out[name + ("_total" if kind == "counter" else "")] = (kind, labels)
    return out


ROWS, PENDING = metric_table()


def test_table_parses() -> None:
    assert len(ROWS) >= 20
    assert "affluent_national_retractions_total" in ROWS


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_each_process_exports_exactly_its_rows(process: str) -> None:
    registry = CollectorRegistry()
    PROCESSES[process](registry)
    got = exported(registry)
    want = {name: (kind, labels) for name, (kind, labels, procs) in ROWS.items() if process in procs}
    assert got == want


def test_every_declared_metric_name_is_in_the_table() -> None:
    declared: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            declared |= set(re.findall(r"\"(affluent_[a-z0-9_]+)\"", path.read_text(encoding="utf-8")))
    assert declared, "no metric declaration found: the scan is broken"
    known = set(ROWS) | {n.removesuffix("_total") for n in ROWS}
    assert declared - known == set(), "metrics declared in code but missing from docs/metrics.md"
    stale = {n for n in ROWS if n not in declared and n.removesuffix("_total") not in declared}
    assert stale == set(), "rows in docs/metrics.md that no code declares"


def test_announced_metrics_are_not_exported_yet() -> None:
    everything: set[str] = set()
    for build in PROCESSES.values():
        registry = CollectorRegistry()
        build(registry)
        everything |= set(exported(registry))
    assert PENDING & everything == set(), "now exported: move it to the table, its panel gets proved"
    assert PENDING & set(ROWS) == set()


HEX_ID = re.compile(r"[0-9a-f]{16}")


def looks_personal(value: str, canaries: list[str]) -> bool:
    return bool(
        NIR_LIKE.search(value) or HEX_ID.search(value) or len(value) > 64 or any(c in value for c in canaries)
    )


def test_labels_from_hostile_or_identifying_input_stay_content_free() -> None:
    import random

    patients = [synthetic.patient(random.Random(7), i) for i in range(5)]
    canaries = [t for p in patients for t in (p.family, p.given, p.nir, p.ipp)]
    registry = CollectorRegistry()
    metrics = MllpMetrics(registry, frozenset({"ADT", "ORU"}))
    senders = SenderActivity(registry, limit=3)
    hostile = [
        *(p.nir for p in patients),
        *(f"{p.family}^{p.given}" for p in patients),
        "CHU-SYNTH",
        "1.2.250.1.71.4.2.7.99",
        "x" * 200,
        "",
        *(f"HOSP{i}" for i in range(10)),
    ]
    for value in hostile:
        senders.seen("mllp", value)
        metrics.messages.labels(metrics.type_label(value[:3].upper(), value[3:6]), "rejected").inc()
    for p in patients:
        metrics.messages.labels(metrics.type_label("ADT", p.nir[:3]), "stored").inc()
    values = {
        v
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        for v in sample.labels.values()
    }
    assert {"CHU-SYNTH", "1.2.250.1.71.4.2.7.99", "invalid", "other"} <= values
    assert [v for v in values if looks_personal(v, canaries)] == []


def test_sender_label_caps_distinct_senders() -> None:
    known: set[str] = set()
    labels = [sender_label(f"H{i}", known, limit=MAX_SENDERS) for i in range(MAX_SENDERS + 5)]
    assert labels[:MAX_SENDERS] == [f"H{i}" for i in range(MAX_SENDERS)]
    assert labels[MAX_SENDERS:] == ["other"] * 5
    assert sender_label("H3", known) == "H3"
    assert sender_label("", known) == "none"
