"""The normalize worker: a faust agent over the raw topics, a thin shell around :class:`Normalizer`.

Batches are processed in order per partition; the canonical outputs of a batch are confirmed by Kafka
(``acks=all``) before the batch's inputs are acknowledged to faust, which commits offsets only after
flushing its producer. A crash anywhere therefore replays inputs — and the deterministic event ids make
the replayed outputs identical — but never skips one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from zoneinfo import ZoneInfo

import faust
from prometheus_client import CollectorRegistry, Gauge

from affluent.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.settings import Settings
from affluent.telemetry import TelemetryServer
from affluent.topics import INGEST_DEVICE_RAW, INGEST_FHIR_RAW, INGEST_HL7V2_RAW
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE
from schemas.registry import Registry
from streams.app import make_app
from streams.normalize.options import MappingOptions
from streams.normalize.stage import Mapper, NormalizeMetrics, Normalizer, Output

log = logging.getLogger(__name__)

RAW_TOPICS = (INGEST_HL7V2_RAW, INGEST_FHIR_RAW, INGEST_DEVICE_RAW)


def default_mappers() -> dict[str, Mapper]:
    from streams.normalize.fhir import map_fhir
    from streams.normalize.hl7 import map_hl7

    return {"hl7v2": map_hl7, "fhir": map_fhir}


def build_worker(
    settings: Settings,
    metrics_registry: CollectorRegistry | None = None,
    raw_topics: tuple[str, ...] = RAW_TOPICS,
) -> tuple[faust.App, TelemetryServer]:
    s = settings
    wait_for_kafka(s.kafka, 30)
    ensure_topics(s.kafka, [TopicSpec(t) for t in (*raw_topics, *CANONICAL_TOPICS, DLQ_NORMALIZE)])
    metrics_registry = metrics_registry or CollectorRegistry()
    normalizer = Normalizer(
        Registry(s.registry),
        MappingOptions(timezone=ZoneInfo(s.streams.timezone)),
        NormalizeMetrics(metrics_registry),
        default_mappers(),
    )
    lag = Gauge(
        "affluent_consumer_lag",
        "Records not yet processed, per consumer group, topic and partition",
        ["group", "topic", "partition"],
        registry=metrics_registry,
    )
    app = make_app(s.streams.normalize_group, s.kafka)
    sources = app.topic(*raw_topics)
    out_topics: dict[str, Any] = {}
    positions: dict[tuple[str, int], int] = {}

    def out(topic: str) -> Any:
        if topic not in out_topics:
            out_topics[topic] = app.topic(topic)
        return out_topics[topic]

    @app.agent(sources)
    async def normalize(stream: Any) -> None:
        async for batch in stream.take_events(s.streams.batch_size, within=s.streams.batch_window_s):
            deliveries = []
            for event in batch:
                msg = event.message
                outputs: list[Output] = normalizer.process(event.value, msg.topic, msg.partition, msg.offset)
                for o in outputs:
                    deliveries.append(await out(o.topic).send(key=o.key, value=o.value))
                positions[(msg.topic, msg.partition)] = msg.offset + 1
            # Outputs durable before the inputs are acknowledged (at-least-once, nothing skipped).
            await asyncio.gather(*deliveries)

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def measure_lag() -> None:
        for tp in app.consumer.assignment():
            high = app.consumer.highwater(tp)
            if high is None:
                continue
            done = positions.get((tp.topic, tp.partition))
            if done is None:
                committed = await app.consumer.committed(tp) if hasattr(app.consumer, "committed") else None
                done = committed or 0
            lag.labels(s.streams.normalize_group, tp.topic, str(tp.partition)).set(max(0, high - done))

    telemetry = TelemetryServer(metrics_registry)

    @app.task  # type: ignore[untyped-decorator]
    async def serve_metrics() -> None:
        if s.streams.metrics_port is not None:
            await telemetry.start(s.streams.metrics_host, s.streams.metrics_port)

    return app, telemetry


def run(settings: Settings) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM (faust handles the signals and drains)."""
    app, _ = build_worker(settings)
    worker = faust.Worker(app, loglevel="WARN", quiet=True)
    worker.execute_from_commandline()
