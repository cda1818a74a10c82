"""Prometheus metrics of the FHIR REST door. Labels are bounded enumerations: never ids, never data."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from affluent.core.limits import refused_connections
from connectors.fhir_rest.intake import RESOURCE_TYPES

ROUTES = ("resource", "bundle", "notification")


class FhirRestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections_refused = refused_connections(registry)
        self.requests = Counter(
            "affluent_fhir_rest_requests",
            "HTTP requests answered by the FHIR REST door, by route and status code",
            ["route", "code"],
            registry=registry,
        )
        self.records = Counter(
            "affluent_fhir_rest_records",
            "Raw records the FHIR REST door handled, by resource type and outcome "
            "(stored, duplicate, refused, kafka_unavailable)",
            ["resource_type", "outcome"],
            registry=registry,
        )
        self.version_reuse = Counter(
            "affluent_fhir_rest_version_reuse",
            "Resources stored under a (sender, <type>/<id>/_history/<vid>) already stored with other "
            "bytes: a server reusing version ids (each is stored with its own raw_id, not replayed)",
            ["resource_type"],
            registry=registry,
        )
        self.notifications = Counter(
            "affluent_fhir_rest_notifications",
            "Subscription notifications received, by type (handshake, heartbeat, event-notification, ...)",
            ["kind"],
            registry=registry,
        )
        self.latency = Histogram(
            "affluent_fhir_rest_latency_seconds",
            "Time from a complete request body to the answer, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30),
            registry=registry,
        )

    def record(self, message_type: str, outcome: str, count: int = 1) -> None:
        self.records.labels(self.type_label(message_type), outcome).inc(count)

    @staticmethod
    def type_label(message_type: str) -> str:
        rtype = message_type.split("/", 1)[0]
        return rtype if rtype in RESOURCE_TYPES else "other"
