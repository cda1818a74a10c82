"""The door runtime: what every door does before its port opens, the same way in every door.

A door must not answer traffic before it can keep its promise, so each one waits for Kafka, creates
its topics, and registers (or finds) the schemas of the records it writes before it listens. Keeping
those steps here means the four doors (MLLP, FHIR REST, devices, the FHIR puller) cannot drift apart
in how they start; how they stop is :mod:`affluent.core.lifecycle`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.settings import KafkaSettings
from affluent.core.telemetry import ReadyCheck, TelemetryServer
from affluent.core.topics import value_subject
from schemas.registry import AvroCodec, Registry, load_schema

KAFKA_WAIT_S = 30.0


async def open_kafka(kafka: KafkaSettings, topics: Iterable[TopicSpec]) -> None:
    """Wait (bounded) until Kafka answers metadata, then create the door's topics when missing."""
    await asyncio.to_thread(wait_for_kafka, kafka, KAFKA_WAIT_S)
    await asyncio.to_thread(ensure_topics, kafka, list(topics))


async def topic_codec(registry: Registry, topic: str, schema: str) -> AvroCodec:
    """The codec of ``topic``'s values: the repository's schema ``schema``, registered under the topic's
    subject at BACKWARD compatibility (the level of every hospital-internal topic)."""
    return await asyncio.to_thread(AvroCodec, registry, value_subject(topic), load_schema(schema), "BACKWARD")


async def start_telemetry(
    metrics_registry: CollectorRegistry, ready: ReadyCheck, host: str, port: int | None
) -> TelemetryServer | None:
    """``/metrics``, ``/health`` and ``/ready`` on their own port; None when disabled."""
    if port is None:
        return None
    telemetry = TelemetryServer(metrics_registry, ready=ready)
    await telemetry.start(host, port)
    return telemetry
