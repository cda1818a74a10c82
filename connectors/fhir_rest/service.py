"""Assemble and run the FHIR REST door from settings: topics, codec, producer, idempotency index, server.

Start-up order matters like the MLLP door's: the idempotency index (``control.fhir.seen``) is read to
its end before the port opens, so a resend arriving right after a restart is still recognised.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from affluent.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.settings import Settings
from affluent.telemetry import TelemetryServer
from affluent.topics import ACK_CACHE_CONFIG, CONTROL_FHIR_SEEN, INGEST_FHIR_RAW, value_subject
from connectors.fhir_rest.auth import Authenticator
from connectors.fhir_rest.commit import Committer
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.fhir_rest.server import FhirRestServer
from connectors.lifecycle import run_until_signalled, shut_down, start_telemetry
from connectors.mllp.ackcache import AckCache
from connectors.producer import DurableProducer
from connectors.raw import RawWriter
from schemas.registry import AvroCodec, Registry, load_schema


class FhirRestService:
    def __init__(
        self,
        settings: Settings,
        metrics_registry: CollectorRegistry | None = None,
        raw_topic: str = INGEST_FHIR_RAW,
        seen_topic: str = CONTROL_FHIR_SEEN,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.settings = settings
        self.raw_topic = raw_topic
        self.seen_topic = seen_topic
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.authenticator = authenticator
        self.producer: DurableProducer | None = None
        self.seen: AckCache | None = None
        self.server: FhirRestServer | None = None
        self.telemetry: TelemetryServer | None = None

    async def start(self, with_telemetry: bool = True) -> int:
        s = self.settings
        await asyncio.to_thread(wait_for_kafka, s.kafka, 30)
        specs = [TopicSpec(self.raw_topic), TopicSpec(self.seen_topic, config=ACK_CACHE_CONFIG)]
        await asyncio.to_thread(ensure_topics, s.kafka, specs)
        codec = await asyncio.to_thread(
            AvroCodec,
            Registry(s.registry),
            value_subject(self.raw_topic),
            load_schema("raw_message"),
            "BACKWARD",
        )
        self.producer = DurableProducer(s.kafka)
        self.seen = AckCache(s.kafka, self.seen_topic, name="fhir-seen")
        await asyncio.to_thread(self.seen.start)
        committer = Committer(self.producer, RawWriter(self.producer, codec, self.raw_topic), self.seen)
        if self.authenticator is None:
            self.authenticator = await asyncio.to_thread(Authenticator, s.fhir_rest)
        self.server = FhirRestServer(
            s.fhir_rest, committer, self.authenticator, FhirRestMetrics(self.metrics_registry)
        )
        port = await self.server.start()
        if with_telemetry:
            self.telemetry = await start_telemetry(
                self.metrics_registry, s.kafka, s.registry, s.fhir_rest.host, s.fhir_rest.metrics_port
            )
        return port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, flush the producer."""
        await shut_down(self.server, self.telemetry, self.producer, self.seen)


async def serve_forever(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    s = settings.fhir_rest
    await run_until_signalled(
        FhirRestService(settings), lambda port: f"FHIR REST door listening on {s.host}:{port}{s.base_path}"
    )
