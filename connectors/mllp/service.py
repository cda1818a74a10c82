"""Assemble and run the MLLP door from settings: topics, codecs, producer, ACK cache, server, telemetry.

Kept apart from :mod:`connectors.mllp.server` so that the server stays a thin shell with its
collaborators passed in (tests build it on port 0 with their own metrics registry), while this module
owns the order of start-up: the ACK cache is read to its end before the port opens, so a resend that
arrives right after a restart is still recognised as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from affluent.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.settings import Settings
from affluent.telemetry import TelemetryServer
from affluent.topics import (
    ACK_CACHE_CONFIG,
    CONTROL_ACK,
    CORE_TOPICS,
    DLQ_INGEST,
    INGEST_HL7V2_RAW,
    value_subject,
)
from connectors.deadletter import DeadLetterWriter
from connectors.lifecycle import kafka_ready, run_until_signal
from connectors.mllp.ackcache import AckCache
from connectors.mllp.server import MllpServer
from connectors.producer import DurableProducer
from schemas.registry import AvroCodec, Registry, load_schema

log = logging.getLogger(__name__)


class MllpService:
    def __init__(
        self,
        settings: Settings,
        metrics_registry: CollectorRegistry | None = None,
        raw_topic: str = INGEST_HL7V2_RAW,
        dlq_topic: str = DLQ_INGEST,
        ack_topic: str = CONTROL_ACK,
    ) -> None:
        self.settings = settings
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self.ack_topic = ack_topic
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.producer: DurableProducer | None = None
        self.ack_cache: AckCache | None = None
        self.server: MllpServer | None = None
        self.telemetry: TelemetryServer | None = None

    async def start(self, with_telemetry: bool = True) -> int:
        s = self.settings
        await asyncio.to_thread(wait_for_kafka, s.kafka, 30)
        specs = [
            *CORE_TOPICS,
            TopicSpec(self.raw_topic),
            TopicSpec(self.dlq_topic),
            TopicSpec(self.ack_topic, config=ACK_CACHE_CONFIG),
        ]
        await asyncio.to_thread(ensure_topics, s.kafka, specs)
        registry = Registry(s.registry)
        raw_codec = await asyncio.to_thread(
            AvroCodec, registry, value_subject(self.raw_topic), load_schema("raw_message"), "BACKWARD"
        )
        dlq_codec = await asyncio.to_thread(
            AvroCodec, registry, value_subject(self.dlq_topic), load_schema("dead_letter"), "BACKWARD"
        )
        self.producer = DurableProducer(s.kafka)
        self.ack_cache = AckCache(s.kafka, self.ack_topic)
        await asyncio.to_thread(self.ack_cache.start)
        self.server = MllpServer(
            s.mllp,
            self.producer,
            raw_codec,
            self.ack_cache,
            DeadLetterWriter(self.producer, dlq_codec, self.dlq_topic),
            self.metrics_registry,
            raw_topic=self.raw_topic,
        )
        port = await self.server.start()
        if with_telemetry and s.mllp.metrics_port is not None:
            self.telemetry = TelemetryServer(self.metrics_registry, ready=self._ready)
            await self.telemetry.start(s.mllp.host, s.mllp.metrics_port)
        return port

    async def _ready(self) -> bool:
        return await kafka_ready(self.settings.kafka)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight frames, flush the producer."""
        if self.server is not None:
            await self.server.stop()
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close)
        if self.ack_cache is not None:
            await asyncio.to_thread(self.ack_cache.stop)


async def serve_forever(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    service = MllpService(settings)
    port = await service.start()
    print(f"MLLP door listening on {settings.mllp.host}:{port}", flush=True)  # noqa: T201
    await run_until_signal(service.stop)
