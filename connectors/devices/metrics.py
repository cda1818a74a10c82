"""Counters of the device doors; labels are door, outcome and template names only — never a device id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from affluent.core.limits import refused_connections


class DeviceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections_refused = refused_connections(registry)
        self.payloads = Counter(
            "affluent_device_payloads",
            "Payloads received by a device door, by door and outcome",
            ["door", "outcome"],
            registry=registry,
        )
        self.readings = Counter(
            "affluent_device_readings_accepted",
            "Readings stored in ingest.device.raw (acknowledged to the sender), by door and template",
            ["door", "template"],
            registry=registry,
        )
        self.latency = Histogram(
            "affluent_device_ack_latency_seconds",
            "Time from payload received to the sender's acknowledgement (Kafka acks included)",
            ["door"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
