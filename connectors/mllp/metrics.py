"""Prometheus metrics of the MLLP door. Labels are bounded enumerations: never ids, never patient data."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from affluent.core.limits import refused_connections
from affluent.core.metrics import SenderActivity, dead_letters

_EVENT = re.compile(r"[A-Z][0-9A-Z]{2}")


class MllpMetrics:
    def __init__(self, registry: CollectorRegistry, allowed_types: frozenset[str]) -> None:
        self._allowed = allowed_types
        self.messages = Counter(
            "affluent_mllp_messages",
            "HL7 v2 messages received over MLLP, by type and outcome "
            "(stored, duplicate, rejected, kafka_unavailable, ignored_ack)",
            ["message_type", "outcome"],
            registry=registry,
        )
        self.acks = Counter(
            "affluent_mllp_acks",
            "Acknowledgements sent, by code (AA, AE, AR, CA, CE, CR)",
            ["code"],
            registry=registry,
        )
        self.rejects = Counter(
            "affluent_mllp_rejects", "Messages refused, by reason code", ["reason"], registry=registry
        )
        self.received_bytes = Counter(
            "affluent_mllp_received_bytes", "Payload bytes of complete MLLP frames", registry=registry
        )
        self.ack_latency = Histogram(
            "affluent_mllp_ack_latency_seconds",
            "Time from a complete frame to its acknowledgement being written",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30),
            registry=registry,
        )
        self.connections = Gauge("affluent_mllp_connections_open", "Open MLLP connections", registry=registry)
        self.connections_total = Counter(
            "affluent_mllp_connections", "MLLP connections accepted", registry=registry
        )
        self.dead_letters = dead_letters(registry)
        self.connections_refused = refused_connections(registry)
        self.senders = SenderActivity(registry)
        self.ack_cache_lost = Counter(
            "affluent_mllp_ack_cache_entries_lost",
            "ACK-cache entries Kafka did not take (their raw records were stored; a resend of such a "
            "message is stored again and collapses downstream by raw_id)",
            registry=registry,
        )
        self.control_id_reuse = Counter(
            "affluent_mllp_control_id_reuse",
            "Messages stored under a (sending facility, MSH-10) already answered for a different "
            "message: a reset counter or a reused id at the sender (each is stored, not replayed)",
            registry=registry,
        )
        self.ack_cache_entries = Gauge(
            "affluent_mllp_ack_cache_entries",
            "Entries in the door's in-memory ACK cache (bounded; oldest out first)",
            registry=registry,
        )
        self.frame_errors = Counter(
            "affluent_mllp_frame_errors",
            "Framing problems (oversize, garbage, unterminated, missing_cr)",
            ["reason"],
            registry=registry,
        )

    def type_label(self, message_type: str, trigger: str) -> str:
        """MSH-9 as a label, collapsed to 'other' unless it is an allowed type with a well-formed event."""
        if message_type not in self._allowed and message_type != "ACK":
            return "other"
        if trigger and not _EVENT.fullmatch(trigger):
            return f"{message_type}^other"
        return f"{message_type}^{trigger}" if trigger else message_type
