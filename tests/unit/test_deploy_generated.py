"""The committed dashboards and alert rules are what their generators produce, and query only real metrics."""

from __future__ import annotations

import json

from tests.support.observability import (
    DASHBOARDS_DIR,
    RULES_FILE,
    dashboards_module,
    metric_names,
    metric_table,
    panel_queries,
    rules_module,
    substitute,
)


def test_committed_dashboards_equal_the_generated_ones() -> None:
    generated = dashboards_module().rendered()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS_DIR.glob("*.json")}
    assert set(committed) == set(generated), "run `make dashboards`"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} differs from its generator: run `make dashboards`"


def test_committed_rules_equal_the_generated_ones() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == rules_module().render(), "run `make dashboards`"


def test_the_required_dashboards_and_panels_exist() -> None:
    titles = {p.stem: json.loads(p.read_text())["title"] for p in DASHBOARDS_DIR.glob("*.json")}
    assert set(titles) == {
        "affluent-overview",
        "affluent-mllp",
        "affluent-fhir",
        "affluent-devices",
        "affluent-streams",
        "affluent-national",
    }
    queries = " ".join(q for _, _, q in panel_queries())
    for needed in (
        "affluent_end_to_end_latency_seconds_bucket",
        "affluent_dlq_records_total",
        "affluent_consumer_lag_records",
        "affluent_mllp_acks_total",
        "affluent_mllp_frame_errors_total",
        "affluent_fhir_rest_records_total",
        "affluent_device_readings_accepted_total",
        "affluent_mllp_connections_open",
        "affluent_consumer_rebalances_total",
        "affluent_opposition_drops_total",
        "affluent_national_retractions_total",
    ):
        assert needed in queries, needed


def test_every_query_reads_only_metrics_of_the_table() -> None:
    rows, pending = metric_table()
    known = set(rows) | pending
    queries = [q for _, _, q in panel_queries()]
    queries += [r["expr"] for g in rules_module().rules()["groups"] for r in g["rules"]]
    for expr in queries:
        assert metric_names(substitute(expr)) <= known, expr


def test_panel_ids_are_unique_per_dashboard() -> None:
    for path in DASHBOARDS_DIR.glob("*.json"):
        ids = [p["id"] for p in json.loads(path.read_text())["panels"]]
        assert len(ids) == len(set(ids)), path.name
