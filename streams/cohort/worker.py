"""``affluent cohort``: the cohort stage as a Faust application (faust-streaming), a shell around
:class:`streams.cohort.stage.CohortStage`.

Per-patient state is what Faust tables are for: the table ``patients`` maps the hospital patient key
to :class:`streams.cohort.state.PatientState` (memberships, held events), stored in RocksDB (rocksdict)
under ``cohort_state_dir`` and written to its changelog topic ``<cohort_group>-patients-changelog``,
from which a restarted or moved worker rebuilds it. The canonical topics are keyed by the patient key,
so the table is co-partitioned with them and the stage scales by partitions over N workers; standby
replicas (``cohort_standby_replicas``) keep a warm copy elsewhere.

Durability is the other stages' rule on this engine: Faust flushes its producer — the cohort records
and the changelog entries — before it commits an input offset, and acknowledges (``acks=-1``). A worker
killed after its outputs were written and before its commit reads those inputs again: the stage sends
the same bytes again (same event ids, they collapse downstream) and its state is idempotent per event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from affluent.core.errors import ConfigError, RegistryUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer, wait_for_kafka
from affluent.core.settings import KafkaSettings, Settings
from affluent.core.telemetry import TelemetryServer
from schemas.catalog import CANONICAL_TOPICS, DLQ_COHORT
from schemas.registry import Registry
from streams.cohort.definition import load_cohorts
from streams.cohort.stage import CohortMetrics, CohortStage, cohort_topics
from streams.cohort.state import Limits
from streams.pseudonymize.worker import DESTINATIONS

log = logging.getLogger(__name__)
TABLE = "patients"


def broker_url(kafka: KafkaSettings) -> str:
    """Faust's broker list: ``kafka://h1:p1;h2:p2``. Only PLAINTEXT for now: a secured cluster is refused
    in one line rather than reached without its security."""
    if kafka.security_protocol != "PLAINTEXT":
        raise ConfigError(
            f"the cohort worker does not speak {kafka.security_protocol} to Kafka yet "
            "(AFFLUENT_KAFKA__SECURITY_PROTOCOL): run it where PLAINTEXT is allowed, on a private listener"
        )
    hosts = [h.strip() for h in kafka.bootstrap_servers.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def partitions_of(kafka: KafkaSettings, topics: list[str]) -> int:
    """The one partition count of the canonical topics (a table needs its sources co-partitioned)."""
    consumer = make_consumer(kafka, group_id="affluent-cohort-probe")
    try:
        metadata = consumer.list_topics(timeout=10).topics
    finally:
        consumer.close()
    counts = {t: len(metadata[t].partitions) for t in topics if t in metadata}
    if len(set(counts.values())) != 1:
        raise ConfigError(
            f"the canonical topics differ in partitions ({counts}): the cohort stage needs them equal "
            "(co-partitioned by patient key); repartition before starting it"
        )
    return next(iter(counts.values()))


def build_app(settings: Settings, metrics: CollectorRegistry) -> Any:
    """The Faust app, its table and its agent; Kafka must be reachable (topics are created here)."""
    import faust

    s = settings.streams
    cohorts = load_cohorts(DESTINATIONS, s.cohorts_dir)
    wait_for_kafka(settings.kafka, 30)
    outputs = cohort_topics(cohorts)
    topics = [*CANONICAL_TOPICS, *outputs, DLQ_COHORT]
    ensure_topics(settings.kafka, [TopicSpec(t) for t in topics])
    partitions = partitions_of(settings.kafka, list(CANONICAL_TOPICS))
    registry = Registry(settings.registry)
    registry.wait_until_reachable()
    stage = CohortStage(
        registry, cohorts, Limits(s.cohort_max_held_events, s.cohort_max_held_bytes), CohortMetrics(metrics)
    )
    state_dir = Path(s.cohort_state_dir) / s.cohort_group  # one application's tables per folder
    state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.cohort_group,
        broker=broker_url(settings.kafka),
        store="rocksdb://",
        datadir=str(state_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        producer_acks=-1,
        table_standby_replicas=s.cohort_standby_replicas,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    patients = app.Table(TABLE, partitions=partitions, key_type=bytes, value_type=bytes)
    source = app.topic(*CANONICAL_TOPICS, key_type=bytes, value_type=bytes)
    sinks = {t: app.topic(t, key_type=bytes, value_type=bytes) for t in (*outputs, DLQ_COHORT)}

    @app.agent(source)
    async def cohort(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            key = message.key if message.key is not None else b""
            while True:
                try:
                    result = stage.process(
                        patients.get(key), key, event.value, message.topic, message.partition, message.offset
                    )
                    break
                except RegistryUnavailable:  # says nothing about the record: wait, keep the order
                    log.warning("registry unavailable, retrying the cohort record in 2 s")
                    await asyncio.sleep(2)
            if result.state is not None:
                patients[key] = result.state
            for send in result.sends:
                await sinks[send.topic].send(key=send.key, value=send.value)

    return app


def serve_metrics(registry: CollectorRegistry, host: str, port: int | None) -> None:
    """``/metrics`` and ``/health`` on their own thread (Faust's own web server stays off)."""
    if port is None:
        return
    server = TelemetryServer(registry)

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(server.start(host, port))
        loop.run_forever()

    threading.Thread(target=run, name="cohort-telemetry", daemon=True).start()


def run(settings: Settings) -> None:
    """Run the worker until SIGINT/SIGTERM (Faust's worker: it commits what it processed, then stops)."""
    import faust

    metrics = CollectorRegistry()
    app = build_app(settings, metrics)
    serve_metrics(metrics, settings.streams.metrics_host, settings.streams.cohort_metrics_port)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
