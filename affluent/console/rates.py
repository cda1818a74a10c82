"""Messages per second per channel, from two scrapes of the components' Prometheus counters.

A rate is a difference of counters over a difference of time, so the console takes a snapshot of every
component's /metrics at a fixed interval and compares the last two. Only counters of docs/metrics.md
are read, summed per channel (a door, a protocol, a stage, a destination): their labels are bounded
vocabularies, never a patient's or a message's id. A counter that went down was reset (the component
restarted): its new value is all that was counted since.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# (counter, the label that names the channel or None for one line, only these label values, caption):
# the caption's ``{}`` takes the channel label's value.
RATED: tuple[tuple[str, str | None, Mapping[str, str], str], ...] = (
    ("affluent_mllp_messages_total", None, {"outcome": "stored"}, "MLLP messages stored"),
    ("affluent_fhir_rest_records_total", None, {"outcome": "stored"}, "FHIR resources stored"),
    ("affluent_fhir_pull_resources_total", "source", {}, "FHIR resources pulled from {}"),
    ("affluent_device_readings_accepted_total", "door", {}, "device readings accepted over {}"),
    ("affluent_normalize_records_in_total", "protocol", {}, "raw records read ({})"),
    ("affluent_normalize_records_out_total", None, {}, "canonical records written"),
    ("affluent_national_records_total", "destination", {}, "national records to {}"),
    ("affluent_opposition_drops_total", "destination", {}, "withheld by objection from {}"),
    ("affluent_dlq_records_total", "stage", {}, "dead letters ({})"),
)

Key = tuple[str, str]  # (component, channel caption)


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # monotonic seconds
    totals: Mapping[Key, float]


@dataclass(frozen=True, slots=True)
class Rate:
    component: str
    channel: str
    per_s: float
    total: float


def totals(component: str, text: str) -> dict[Key, float]:
    """The channel totals one component's /metrics text holds (what it does not export is absent)."""
    out: dict[Key, float] = {}
    wanted = {name: (label, only, caption) for name, label, only, caption in RATED}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            rule = wanted.get(sample.name)
            if rule is None:
                continue
            label, only, caption = rule
            if any(sample.labels.get(k) != v for k, v in only.items()):
                continue
            channel = caption.format(sample.labels.get(label, "")) if label else caption
            out[(component, channel)] = out.get((component, channel), 0.0) + float(sample.value)
    return out


def rates(before: Snapshot, after: Snapshot) -> list[Rate]:
    """Per channel of ``after``: its rate since ``before`` (reset counters restart from zero)."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return []
    out = []
    for key, now in sorted(after.totals.items()):
        then = before.totals.get(key, 0.0)
        counted = now - then if now >= then else now
        out.append(Rate(key[0], key[1], counted / elapsed, now))
    return out
