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

from affluent.core.kafka import TopicSpec
from affluent.core.lifecycle import run_until_signalled, shut_down
from affluent.core.producer import DurableProducer
from affluent.core.settings import MllpSettings, Settings
from affluent.core.telemetry import TelemetryServer
from affluent.core.tls import check_key_file, refuse_unprotected
from affluent.core.topics import (
    ACK_CACHE_CONFIG,
    CONTROL_ACK,
    CORE_TOPICS,
    DLQ_INGEST,
    INGEST_HL7V2_RAW,
)
from connectors.mllp.ackcache import AckCache
from connectors.mllp.server import MllpServer
from connectors.runtime import open_kafka, start_telemetry, topic_codec
from schemas.deadletter import DeadLetterWriter
from schemas.readiness import dependencies
from schemas.registry import Registry

log = logging.getLogger(__name__)


def check_exposure(settings: MllpSettings) -> None:
    """Refuse to listen beyond loopback unprotected. MLLP has no authentication of its own: whoever
    reaches the port may send as any facility, so beyond loopback the door needs TLS, a client
    certificate on every connection and the per-facility allow-list that binds MSH-4 to certificates."""
    if settings.tls_key is not None:
        check_key_file(settings.tls_key, "AFFLUENT_MLLP__TLS_KEY")
    missing = []
    if settings.tls_certificate is None:
        missing.append("TLS (AFFLUENT_MLLP__TLS_CERTIFICATE, AFFLUENT_MLLP__TLS_KEY)")
    if settings.tls_client_ca is None or not settings.tls_require_client_certificate:
        missing.append(
            "required client certificates "
            "(AFFLUENT_MLLP__TLS_CLIENT_CA, AFFLUENT_MLLP__TLS_REQUIRE_CLIENT_CERTIFICATE=true)"
        )
    if not settings.tls_allowed_subjects:
        missing.append("the per-facility allow-list (AFFLUENT_MLLP__TLS_ALLOWED_SUBJECTS)")
    refuse_unprotected(
        "the MLLP door",
        settings.host,
        missing,
        allow_plaintext=settings.allow_plaintext,
        allow_setting="AFFLUENT_MLLP__ALLOW_PLAINTEXT",
    )


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
        check_exposure(s.mllp)
        specs = [
            *CORE_TOPICS,
            TopicSpec(self.raw_topic),
            TopicSpec(self.dlq_topic),
            TopicSpec(self.ack_topic, config=ACK_CACHE_CONFIG),
        ]
        await open_kafka(s.kafka, specs)
        registry = Registry(s.registry)
        raw_codec = await topic_codec(registry, self.raw_topic, "raw_message")
        dlq_codec = await topic_codec(registry, self.dlq_topic, "dead_letter")
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
        if with_telemetry:
            self.telemetry = await start_telemetry(
                self.metrics_registry, dependencies(s.kafka, s.registry), s.mllp.host, s.mllp.metrics_port
            )
        return port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight frames, flush the producer."""
        await shut_down(self.server, self.telemetry, self.producer, self.ack_cache)


async def serve_forever(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    await run_until_signalled(
        MllpService(settings), lambda port: f"MLLP door listening on {settings.mllp.host}:{port}"
    )
