"""affluent's Grafana dashboards as code: ``make dashboards`` writes ``deploy/grafana/dashboards/*.json``.

Panels are plain data (title, unit, PromQL, legend) so that the proof test can evaluate every query the
dashboards hold against a real Prometheus, and rendering goes through grafana-foundation-sdk so that the
JSON is a dashboard Grafana accepts. Every query names only metrics of docs/metrics.md (or ``up``).

Extension point for the doors that land later (FHIR REST, FHIR puller, devices, MirrorMaker): add a
``Board`` to ``DOOR_BOARDS`` with panels on the door's own metrics once they are exported and in the
metric table; the overview already shows any door that reports through
``affluent.core.metrics.SenderActivity`` (``door`` label) and ``affluent.core.metrics.dead_letters``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Variable:
    """A multi-value label filter; queries use it as ``label=~"$name"``."""

    name: str
    metric: str
    label: str


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    variables: tuple[Variable, ...] = field(default=())


def rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}{RATE}))"


def quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{selector}{RATE})))"


def quantile_all(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{RATE})))"


E2E = "affluent_end_to_end_latency_seconds"

OVERVIEW = Board(
    "affluent-overview",
    "affluent / Overview",
    "Throughput in per door and out per destination, end-to-end latency, dead letters, lag, processes.",
    (
        (
            "Throughput",
            (
                Panel(
                    "Messages in per door",
                    (Query(rate("affluent_sender_messages_total", "door"), "{{door}}"),),
                    "reqps",
                    "Every message a door received, any outcome (SenderActivity).",
                ),
                Panel(
                    "Raw records normalized per protocol",
                    (Query(rate("affluent_normalize_records_in_total", "protocol"), "{{protocol}}"),),
                    "reqps",
                ),
                Panel(
                    "National records out per destination",
                    (Query(rate("affluent_national_records_total", "destination"), "{{destination}}"),),
                    "reqps",
                ),
            ),
        ),
        (
            "Health",
            (
                Panel(
                    "End-to-end latency p50 / p99 (door → national topic)",
                    (
                        Query(quantile(0.5, E2E, "destination"), "p50 {{destination}}"),
                        Query(quantile(0.99, E2E, "destination"), "p99 {{destination}}"),
                    ),
                    "s",
                ),
                Panel(
                    "Dead letters per stage",
                    (Query(rate("affluent_dlq_records_total", "stage"), "{{stage}}"),),
                    "reqps",
                ),
                Panel(
                    "Consumer lag per group",
                    (Query("sum by (group) (affluent_consumer_lag_records)", "{{group}}"),),
                    "short",
                ),
                Panel(
                    "Processes up",
                    (Query('up{job="affluent"}', "{{component}} {{instance}}"),),
                    "short",
                    "1 when Prometheus scraped the process's /metrics, 0 when it did not answer.",
                    "stat",
                ),
            ),
        ),
    ),
)

MLLP = Board(
    "affluent-mllp",
    "affluent / MLLP door",
    "HL7 v2 over MLLP: connections, messages, acknowledgement codes, framing errors, senders.",
    (
        (
            "Connections and traffic",
            (
                Panel("Open connections", (Query("sum(affluent_mllp_connections_open)", "open"),)),
                Panel(
                    "Connections accepted",
                    (Query("sum(rate(affluent_mllp_connections_total[$__rate_interval]))", "accepted"),),
                    "cps",
                ),
                Panel(
                    "Messages by type and outcome",
                    (
                        Query(
                            rate("affluent_mllp_messages_total", "message_type, outcome"),
                            "{{message_type}} {{outcome}}",
                        ),
                    ),
                    "reqps",
                ),
                Panel(
                    "Bytes received",
                    (Query("sum(rate(affluent_mllp_received_bytes_total[$__rate_interval]))", "bytes"),),
                    "Bps",
                ),
            ),
        ),
        (
            "Answers and errors",
            (
                Panel(
                    "Acknowledgement codes",
                    (Query(rate("affluent_mllp_acks_total", "code"), "{{code}}"),),
                    "reqps",
                ),
                Panel(
                    "Refusals by reason",
                    (Query(rate("affluent_mllp_rejects_total", "reason"), "{{reason}}"),),
                    "reqps",
                ),
                Panel(
                    "Frame errors by reason",
                    (Query(rate("affluent_mllp_frame_errors_total", "reason"), "{{reason}}"),),
                    "reqps",
                ),
                Panel(
                    "ACK latency p50 / p99",
                    (
                        Query(quantile_all(0.5, "affluent_mllp_ack_latency_seconds"), "p50"),
                        Query(quantile_all(0.99, "affluent_mllp_ack_latency_seconds"), "p99"),
                    ),
                    "s",
                    "Complete frame to ACK written, including Kafka's acks=all round trip.",
                ),
            ),
        ),
        (
            "Senders",
            (
                Panel(
                    "Seconds since each sender's last message",
                    (
                        Query(
                            "time() - max by (sender) "
                            '(affluent_sender_last_message_timestamp_seconds{door="mllp"})',
                            "{{sender}}",
                        ),
                    ),
                    "s",
                ),
                Panel(
                    "Messages per sender",
                    (Query(rate("affluent_sender_messages_total", "sender", '{door="mllp"}'), "{{sender}}"),),
                    "reqps",
                ),
            ),
        ),
    ),
)

STREAMS = Board(
    "affluent-streams",
    "affluent / Streams",
    "The normalize and pseudonymize workers: per-stage rates, latency, lag, rebalances, dead letters.",
    (
        (
            "Rates",
            (
                Panel(
                    "normalize: raw records in per protocol",
                    (Query(rate("affluent_normalize_records_in_total", "protocol"), "{{protocol}}"),),
                    "reqps",
                ),
                Panel(
                    "normalize: canonical records out per kind",
                    (Query(rate("affluent_normalize_records_out_total", "kind"), "{{kind}}"),),
                    "reqps",
                ),
                Panel(
                    "pseudonymize: canonical records in per kind",
                    (Query(rate("affluent_pseudonymize_records_in_total", "kind"), "{{kind}}"),),
                    "reqps",
                ),
                Panel(
                    "Stage latency p99",
                    (Query(quantile(0.99, "affluent_stage_latency_seconds", "stage"), "{{stage}}"),),
                    "s",
                ),
            ),
        ),
        (
            "Consumers",
            (
                Panel(
                    "Lag per group and topic",
                    (Query("sum by (group, topic) (affluent_consumer_lag_records)", "{{group}} {{topic}}"),),
                ),
                Panel(
                    "Rebalances (last hour)",
                    (
                        Query(
                            "sum by (group) (increase(affluent_consumer_rebalances_total[1h]))", "{{group}}"
                        ),
                    ),
                ),
                Panel(
                    "Dead letters by stage and reason",
                    (Query(rate("affluent_dlq_records_total", "stage, reason"), "{{stage}} {{reason}}"),),
                    "reqps",
                ),
            ),
        ),
    ),
)

DEST = '{destination=~"$destination"}'
NATIONAL = Board(
    "affluent-national",
    "affluent / National feed",
    "What leaves for the national platforms: per destination and type, opposition drops, retractions.",
    (
        (
            "Feed",
            (
                Panel(
                    "National records per destination and type",
                    (
                        Query(
                            rate("affluent_national_records_total", "destination, kind", DEST),
                            "{{destination}} {{kind}}",
                        ),
                    ),
                    "reqps",
                ),
                Panel(
                    "End-to-end latency p99 per door and destination",
                    (
                        Query(
                            quantile(0.99, E2E, "source, destination", DEST), "{{source}} → {{destination}}"
                        ),
                    ),
                    "s",
                ),
            ),
        ),
        (
            "Patients' rights",
            (
                Panel(
                    "Opposition drops",
                    (Query(rate("affluent_opposition_drops_total", "destination", DEST), "{{destination}}"),),
                    "reqps",
                    "Records withheld from a destination because the patient objected.",
                ),
                Panel(
                    "Retractions sent per destination and kind",
                    (
                        Query(
                            rate("affluent_national_retractions_total", "destination, kind", DEST),
                            "{{destination}} {{kind}}",
                        ),
                    ),
                    "reqps",
                    "Merges and cancellations (pseudonymize stage) and objections (opposition endpoint).",
                ),
                Panel(
                    "Objection requests by action and outcome",
                    (
                        Query(
                            rate("affluent_opposition_requests_total", "action, outcome"),
                            "{{action}} {{outcome}}",
                        ),
                    ),
                    "reqps",
                    "Requests to the opposition endpoint (register, withdraw, count).",
                ),
                Panel(
                    "Opposition registry entries",
                    (Query("max(affluent_opposition_entries)", "entries"),),
                    "short",
                    kind="stat",
                ),
                Panel(
                    "Pseudonymization key in use",
                    (
                        Query(
                            f"max by (destination, key_id) (affluent_pseudonym_key_info{DEST})",
                            "{{destination}} {{key_id}}",
                        ),
                    ),
                    "short",
                    kind="stat",
                ),
            ),
        ),
    ),
    (Variable("destination", "affluent_national_records_total", "destination"),),
)

# Doors that export their own metrics get their board here (FHIR REST, FHIR puller, devices): none yet.
FHIR = Board(
    "affluent-fhir",
    "affluent / FHIR REST door",
    "FHIR R4 over REST: requests and status codes, resources stored or refused, answer latency.",
    (
        (
            "Requests",
            (
                Panel(
                    "Requests by route and status",
                    (Query(rate("affluent_fhir_rest_requests_total", "route, code"), "{{route}} {{code}}"),),
                    "reqps",
                ),
                Panel(
                    "Resources by type and outcome",
                    (
                        Query(
                            rate("affluent_fhir_rest_records_total", "resource_type, outcome"),
                            "{{resource_type}} {{outcome}}",
                        ),
                    ),
                    "reqps",
                    "stored, duplicate (a resend answered from the index), refused, kafka_unavailable.",
                ),
                Panel(
                    "Answer latency p50 / p99",
                    (
                        Query(quantile(0.5, "affluent_fhir_rest_latency_seconds", "route"), "p50 {{route}}"),
                        Query(quantile(0.99, "affluent_fhir_rest_latency_seconds", "route"), "p99 {{route}}"),
                    ),
                    "s",
                    "Complete request body to answer, including validation and Kafka's acks=all.",
                ),
            ),
        ),
    ),
)

DEVICES = Board(
    "affluent-devices",
    "affluent / device doors",
    "Telemonitoring over HTTPS JSON and MQTT: payloads by outcome, readings stored, acknowledgement latency.",
    (
        (
            "Readings",
            (
                Panel(
                    "Payloads by door and outcome",
                    (Query(rate("affluent_device_payloads_total", "door, outcome"), "{{door}} {{outcome}}"),),
                    "reqps",
                ),
                Panel(
                    "Readings stored by template",
                    (
                        Query(
                            rate("affluent_device_readings_accepted_total", "door, template"),
                            "{{door}} {{template}}",
                        ),
                    ),
                    "reqps",
                ),
                Panel(
                    "Acknowledgement latency p50 / p99",
                    (
                        Query(quantile(0.5, "affluent_device_ack_latency_seconds", "door"), "p50 {{door}}"),
                        Query(quantile(0.99, "affluent_device_ack_latency_seconds", "door"), "p99 {{door}}"),
                    ),
                    "s",
                    "Payload received to 202 / PUBACK, including Kafka's acks=all.",
                ),
            ),
        ),
    ),
)

DOOR_BOARDS: tuple[Board, ...] = (MLLP, FHIR, DEVICES)
BOARDS: tuple[Board, ...] = (OVERVIEW, *DOOR_BOARDS, STREAMS, NATIONAL)


def _panel(panel: Panel, panel_id: int, width: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel = stat.Panel() if panel.kind == "stat" else timeseries.Panel()
    builder.id(panel_id).title(panel.title).unit(panel.unit).datasource(DATASOURCE).height(8).span(width)
    if panel.description:
        builder.description(panel.description)
    for i, query in enumerate(panel.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + i))
        if query.legend:
            target.legend_format(query.legend)
        builder.with_target(target)
    return builder


def build(board: Board) -> dashboard.Dashboard:
    out = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(["affluent", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for var in board.variables:
        out.with_variable(
            dashboard.QueryVariable(var.name)
            .datasource(DATASOURCE)
            .query(f"label_values({var.metric}, {var.label})")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    panel_id = 1
    for title, panels in board.rows:
        out.with_row(dashboard.Row(title).id(panel_id))
        panel_id += 1
        width = max(6, 24 // max(1, len(panels)))
        for panel in panels:
            out.with_panel(_panel(panel, panel_id, width))
            panel_id += 1
    return out


def render(board: Board) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build(board).build()) + "\n"


def rendered() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{board.uid}.json": render(board) for board in BOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    files = rendered()
    for stale in args.out.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} dashboards to {args.out}", file=sys.stderr)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
