"""Metrics that several components export, and the rules every affluent label obeys.

One process may host several components on one ``CollectorRegistry`` (``affluent run``, tests), and
prometheus_client refuses a name registered twice. The collectors below are therefore created once
per registry and shared: the dead-letter counter of normalize and pseudonymize, the stage latency, the
consumer lag, the sender activity of every door. docs/metrics.md is the table of every exported name;
tests/unit/test_metrics_table.py keeps the two in step.

Labels are bounded enumerations. A sender is an organisation (MSH-4 facility, FHIR client, device
gateway), never a person, and :func:`sender_label` caps how many distinct ones a process exports.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

C = TypeVar("C", Counter, Gauge, Histogram)

_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, object]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()

STAGE_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)
# Distinct senders one process exports before collapsing the rest into "other".
MAX_SENDERS = 500
_SENDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Anything shaped like a NIR (13 characters, Corsica's 2A/2B included) is no organisation id.
NIR_LIKE = re.compile(r"\d{5}(?:\d{2}|2[ABab])\d{6}")


def shared(registry: CollectorRegistry, name: str, make: Callable[[], C]) -> C:
    """The collector ``name`` of ``registry``, made by ``make`` the first time it is asked for."""
    with _lock:
        per_registry = _shared.setdefault(registry, {})
        if name not in per_registry:
            per_registry[name] = make()
        found = per_registry[name]
    return found  # type: ignore[return-value]


def _counter(registry: CollectorRegistry, name: str, doc: str, labels: list[str]) -> Counter:
    return shared(registry, name, lambda: Counter(name, doc, labels, registry=registry))


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: list[str]) -> Gauge:
    return shared(registry, name, lambda: Gauge(name, doc, labels, registry=registry))


def dead_letters(registry: CollectorRegistry) -> Counter:
    return _counter(
        registry,
        "affluent_dlq_records",
        "Dead letters written, by stage and reason code",
        ["stage", "reason"],
    )


def stage_latency(registry: CollectorRegistry) -> Histogram:
    return shared(
        registry,
        "affluent_stage_latency_seconds",
        lambda: Histogram(
            "affluent_stage_latency_seconds",
            "Processing time of one input record in a stream stage (decode, map or transform, encode)",
            ["stage"],
            buckets=STAGE_LATENCY_BUCKETS,
            registry=registry,
        ),
    )


def consumer_lag(registry: CollectorRegistry) -> Gauge:
    return _gauge(
        registry,
        "affluent_consumer_lag_records",
        "Records not yet processed, per consumer group, topic and partition",
        ["group", "topic", "partition"],
    )


def rebalances(registry: CollectorRegistry) -> Counter:
    return _counter(
        registry,
        "affluent_consumer_rebalances",
        "Partition assignments completed by a stream worker's consumer group",
        ["group"],
    )


def retractions(registry: CollectorRegistry) -> Counter:
    """Retractions sent to the platforms: by the pseudonymize stage (merges, cancellations, deletions)
    and by the opposition endpoint (objections)."""
    return _counter(
        registry,
        "affluent_national_retractions",
        "Retractions sent to a destination, by kind (DELETE, MERGE, OPPOSITION, CANCEL)",
        ["destination", "kind"],
    )


def sender_label(sender: str, known: set[str], limit: int = MAX_SENDERS) -> str:
    """A sender id as a label: itself when well formed and among the first ``limit`` seen, else a class.

    ``known`` is the caller's set of senders already exported (updated here).
    """
    if not sender:
        return "none"
    if not _SENDER.fullmatch(sender) or NIR_LIKE.search(sender):
        return "invalid"
    if sender in known:
        return sender
    if len(known) >= limit:
        return "other"
    known.add(sender)
    return sender


class SenderActivity:
    """Messages per door and sender, and when each sender was last heard from (the no-traffic alert)."""

    def __init__(self, registry: CollectorRegistry, limit: int = MAX_SENDERS) -> None:
        self._known: set[str] = set()
        self._limit = limit
        self.messages = _counter(
            registry,
            "affluent_sender_messages",
            "Messages received per door and sender organisation (any outcome)",
            ["door", "sender"],
        )
        self.last_seen = _gauge(
            registry,
            "affluent_sender_last_message_timestamp_seconds",
            "Unix time of the last message received from a sender organisation, per door",
            ["door", "sender"],
        )

    def seen(self, door: str, sender: str, now: Callable[[], float] = time.time) -> None:
        label = sender_label(sender, self._known, self._limit)
        self.messages.labels(door, label).inc()
        self.last_seen.labels(door, label).set(now())


class Labelled(Generic[C]):
    """A metric's children by label values, looked up once: ``metric.labels(...)`` takes a lock and builds
    a key on every call, which is a visible share of a stream stage's per-record cost. Only for labels
    that are bounded enumerations (kinds, destinations, doors), like every affluent label."""

    def __init__(self, metric: C) -> None:
        self._metric: C = metric
        self._children: dict[tuple[str, ...], C] = {}

    def __call__(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child
