"""affluent's Prometheus alert rules as code: ``make dashboards`` writes ``deploy/prometheus/rules/``.

The rules are generated from one function whose thresholds are parameters, so that the proof test can
load the very same expressions with thresholds a 90-second test can reach (a sender silent for 5 s
instead of 15 min) and watch them fire. The committed file is the function with its defaults; a test
checks the two are equal.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent / "rules" / "affluent.rules.yml"


@dataclass(frozen=True)
class Thresholds:
    sender_silence_s: int = 900  # a hospital's interface engine silent for 15 min is worth a look
    sender_lookback: str = "1d"  # how long a silent sender is remembered (process restarts included)
    dead_letter_window: str = "10m"
    dead_letters: int = 10  # dead letters per stage and reason within the window
    e2e_window: str = "10m"
    e2e_p99_s: float = 60.0
    lag_window: str = "15m"
    lag_records: int = 1000
    negative_ack_window: str = "10m"
    negative_acks: int = 5
    down_for: str = "1m"
    for_: str = "5m"  # how long a condition holds before it fires (except process down)


def rules(t: Thresholds = Thresholds()) -> dict[str, Any]:
    def alert(
        name: str, expr: str, for_: str, severity: str, summary: str, description: str
    ) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity, "service": "affluent"},
            "annotations": {"summary": summary, "description": description},
        }

    return {
        "groups": [
            {
                "name": "affluent",
                "rules": [
                    alert(
                        "AffluentProcessDown",
                        'up{job="affluent"} == 0',
                        t.down_for,
                        "critical",
                        "affluent {{ $labels.component }} at {{ $labels.instance }} does not answer /metrics",
                        "The process is down or unreachable: its door refuses traffic or its stage stopped.",
                    ),
                    alert(
                        "AffluentSenderSilent",
                        "time() - max by (door, sender) (max_over_time("
                        f"affluent_sender_last_message_timestamp_seconds[{t.sender_lookback}])) "
                        f"> {t.sender_silence_s}",
                        t.for_,
                        "warning",
                        "No message from sender {{ $labels.sender }} on door {{ $labels.door }}",
                        f"Nothing received from this sender for more than {t.sender_silence_s} s: "
                        "check its interface engine and the network path.",
                    ),
                    alert(
                        "AffluentDeadLettersHigh",
                        "sum by (stage, reason) "
                        f"(increase(affluent_dlq_records_total[{t.dead_letter_window}])) > {t.dead_letters}",
                        t.for_,
                        "warning",
                        "Dead letters in stage {{ $labels.stage }} ({{ $labels.reason }})",
                        f"More than {t.dead_letters} dead letters in {t.dead_letter_window}: "
                        "see docs/operations.md, Replaying a topic.",
                    ),
                    alert(
                        "AffluentNegativeAcks",
                        'sum by (code) (increase(affluent_mllp_acks_total{code=~"AR|CR"}'
                        f"[{t.negative_ack_window}])) > {t.negative_acks}",
                        t.for_,
                        "warning",
                        "MLLP door sends {{ $labels.code }} acknowledgements",
                        "Senders' messages are refused (AR/CR): unsupported types, unreadable messages "
                        "or Kafka unavailable; see affluent_mllp_rejects_total by reason.",
                    ),
                    alert(
                        "AffluentEndToEndSlow",
                        "histogram_quantile(0.99, sum by (le, destination) (rate("
                        f"affluent_end_to_end_latency_seconds_bucket[{t.e2e_window}]))) > {t.e2e_p99_s}",
                        t.for_,
                        "warning",
                        "End-to-end p99 latency to {{ $labels.destination }} is high",
                        f"99th percentile from door to national topic above {t.e2e_p99_s} s.",
                    ),
                    alert(
                        "AffluentConsumerLagGrowing",
                        f"sum by (group, topic) (delta(affluent_consumer_lag_records[{t.lag_window}])) > 0 "
                        f"and sum by (group, topic) (affluent_consumer_lag_records) > {t.lag_records}",
                        t.for_,
                        "warning",
                        "Consumer group {{ $labels.group }} falls behind on {{ $labels.topic }}",
                        "Lag above the threshold and still growing: add workers (up to the partition "
                        "count), see docs/operations.md, Scaling out.",
                    ),
                ],
            }
        ]
    }


def render(t: Thresholds = Thresholds()) -> str:
    header = (
        "# Generated by deploy/prometheus/rules.py (make dashboards): edit the generator, not this file.\n"
    )
    return header + yaml.safe_dump(rules(t), sort_keys=False, width=200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write affluent's alert rules")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(), encoding="utf-8")
    print(f"wrote {args.out} ({', '.join(asdict(Thresholds()))})", file=sys.stderr)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
