"""Topic names and how each topic is created: the contract between the hops (design §4).

Names are constants so that a typo is an import error, not a silently empty topic.
"""

from __future__ import annotations

from affluent.core.kafka import TopicSpec

INGEST_HL7V2_RAW = "ingest.hl7v2.raw"
INGEST_FHIR_RAW = "ingest.fhir.raw"
INGEST_DEVICE_RAW = "ingest.device.raw"
CONTROL_ACK = "control.ack"
CONTROL_OPPOSITION = "control.opposition"
CONTROL_DEVICES = "control.devices"  # device registry: device id -> link history (compacted)
DLQ_INGEST = "dlq.ingest"
# FHIR REST door: raw_id (or If-None-Exist digest) -> the answer given, so a resend stores nothing new.
CONTROL_FHIR_SEEN = "control.fhir.seen"
CONTROL_FHIR_POLL_CHECKPOINTS = "control.fhir_poll.checkpoints"
# The audit trail: who did what, append-only (never compacted), kept AFFLUENT_AUDIT__RETENTION_MS.
CONTROL_AUDIT = "control.audit"

COMPACTED_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
# The ACK cache only needs to outlive a sender's retry horizon: compacted, and bounded to 7 days.
ACK_CACHE_CONFIG = {
    **COMPACTED_CONFIG,
    "cleanup.policy": "compact,delete",
    "retention.ms": str(7 * 86_400_000),
}

CORE_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(INGEST_HL7V2_RAW),
    TopicSpec(INGEST_FHIR_RAW),
    TopicSpec(INGEST_DEVICE_RAW),
    TopicSpec(DLQ_INGEST),
    # The MLLP ACK cache: the last ACK per (facility, MSH-10) survives restarts, older ones compact away.
    TopicSpec(CONTROL_ACK, config=ACK_CACHE_CONFIG),
    TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG),
    TopicSpec(CONTROL_FHIR_SEEN, config=ACK_CACHE_CONFIG),
    # The FHIR puller's position per (source, resource type): only the latest value matters.
    TopicSpec(CONTROL_FHIR_POLL_CHECKPOINTS, config=COMPACTED_CONFIG),
    TopicSpec(CONTROL_DEVICES, config=COMPACTED_CONFIG),
)


def audit_topic(retention_ms: int) -> TopicSpec:
    """``control.audit``: one partition (one order for the whole trail), deleted only by age."""
    return TopicSpec(
        CONTROL_AUDIT, partitions=1, config={"cleanup.policy": "delete", "retention.ms": str(retention_ms)}
    )


def value_subject(topic: str) -> str:
    """TopicNameStrategy: the registry subject of a topic's values."""
    return f"{topic}-value"
