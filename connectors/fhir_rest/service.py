"""Assemble and run the FHIR REST door from settings: topics, codec, producer, idempotency index, server.

Start-up order matters like the MLLP door's: the idempotency index (``control.fhir.seen``) is read to
its end before the port opens, so a resend arriving right after a restart is still recognised.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec
from affluent.core.lifecycle import run_until_signalled, shut_down
from affluent.core.producer import DurableProducer
from affluent.core.settings import FhirRestSettings, Settings
from affluent.core.telemetry import TelemetryServer
from affluent.core.tls import refuse_clear_http
from affluent.core.topics import ACK_CACHE_CONFIG, CONTROL_FHIR_SEEN, INGEST_FHIR_RAW
from connectors.fhir_rest.auth import Authenticator
from connectors.fhir_rest.commit import Committer
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.fhir_rest.server import FhirRestServer
from connectors.mllp.ackcache import AckCache
from connectors.raw import RawWriter
from connectors.runtime import open_kafka, start_telemetry, topic_codec
from schemas.readiness import dependencies
from schemas.registry import Registry


def check_exposure(settings: FhirRestSettings) -> None:
    """Refuse to listen beyond loopback in clear text: bearer tokens and patients' resources would cross
    the network readable by anyone on the path. The door authenticates its senders itself (tokens, JWT,
    client certificates), so TLS is the one thing it needs from the network."""
    refuse_clear_http(
        "the FHIR REST door",
        "AFFLUENT_FHIR_REST",
        settings.host,
        settings.tls_certificate,
        settings.tls_key,
        settings.allow_plaintext,
    )


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
        check_exposure(s.fhir_rest)
        await open_kafka(
            s.kafka, [TopicSpec(self.raw_topic), TopicSpec(self.seen_topic, config=ACK_CACHE_CONFIG)]
        )
        codec = await topic_codec(Registry(s.registry), self.raw_topic, "raw_message")
        self.producer = DurableProducer(s.kafka)
        self.seen = AckCache(s.kafka, self.seen_topic, name="fhir-seen")
        await asyncio.to_thread(self.seen.start)
        committer = Committer(self.producer, RawWriter(self.producer, codec, self.raw_topic), self.seen)
        if self.authenticator is None:
            self.authenticator = await asyncio.to_thread(Authenticator, s.fhir_rest)
        self.server = FhirRestServer(
            s.fhir_rest, committer, self.authenticator, FhirRestMetrics(self.metrics_registry)
        )
        try:
            port = await self.server.start()
            if with_telemetry:
                self.telemetry = await start_telemetry(
                    self.metrics_registry,
                    dependencies(s.kafka, s.registry),
                    s.fhir_rest.host,
                    s.fhir_rest.metrics_port,
                )
        except BaseException:  # e.g. a port in use: close what was opened, so the error stays one line
            await self.stop()
            raise
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
