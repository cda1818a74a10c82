"""The faust-streaming application factory shared by the stream stages.

Values and keys are raw bytes on purpose: affluent encodes Avro itself (Confluent wire format through
the registry), so faust only moves bytes and never guesses a codec. Processing is at-least-once —
faust-streaming's exactly_once has open duplicate bugs — and correctness comes from deterministic
event ids. Topics are created by affluent (``auto.create.topics.enable`` is off on our brokers).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from affluent.errors import AffluentError, RegistryUnavailable
from affluent.metrics import consumer_lag, rebalances
from affluent.settings import KafkaSettings, StreamsSettings
from affluent.telemetry import ReadyCheck, TelemetryServer
from connectors.producer import DurableProducer
from streams.transient import when_registry_back

log = logging.getLogger(__name__)

# A batch's outputs are resent this many times (backing off up to 10 s) before the worker gives up.
DELIVERY_ATTEMPTS = 6
EXIT_UNDELIVERED = 75  # EX_TEMPFAIL: restart me
OUTPUT_LINGER_MS = 5


class StageDeliveryFailed(AffluentError):
    """Kafka did not confirm a batch's outputs after every attempt."""


def broker_url(kafka: KafkaSettings) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(","))


def broker_credentials(kafka: KafkaSettings) -> Any:
    """faust/aiokafka credentials from the same settings the confluent clients use."""
    import ssl

    context: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
        )
        if kafka.ssl_certificate_location and kafka.ssl_key_location:
            context.load_cert_chain(
                str(kafka.ssl_certificate_location),
                str(kafka.ssl_key_location),
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
            )
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(name: str, kafka: KafkaSettings, **conf: Any) -> faust.App:
    return faust.App(
        name,
        broker=broker_url(kafka),
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        topic_allow_declare=False,
        topic_partitions=kafka.default_partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        **conf,
    )


def install_stage(
    app: faust.App,
    source_topics: Sequence[str],
    process: Callable[[bytes | None, str, int, int], Sequence[Any]],
    group: str,
    streams: StreamsSettings,
    metrics_registry: CollectorRegistry,
    metrics_port: int | None,
    kafka: KafkaSettings,
    ready: ReadyCheck | None = None,
) -> TelemetryServer:
    """Wire one stage into a faust app: the batch agent, lag and rebalance metrics, the telemetry server.

    Every stage has the same shell, so the rule "a batch's outputs are confirmed by Kafka before its
    inputs are acknowledged" lives here once. ``process`` is the stage's pure-ish function: a record's
    value and position in, outputs (``topic``, ``key``, ``value``) out; it raises nothing but
    :class:`RegistryUnavailable` (the batch is then held until the registry answers).
    """
    lag = consumer_lag(metrics_registry)
    assignments = rebalances(metrics_registry).labels(group)
    sources = app.topic(*source_topics)
    positions: dict[tuple[str, int], int] = {}
    # Created on first use, inside the worker's event loop (its futures belong to that loop).
    producers: list[DurableProducer] = []

    def producer() -> DurableProducer:
        if not producers:
            # Batches are sent whole and waited for once: a short linger packs them into few requests.
            producers.append(DurableProducer(kafka, **{"linger.ms": OUTPUT_LINGER_MS}))
        return producers[0]

    # Never closed explicitly: every batch waits for its own delivery reports, so at shutdown nothing
    # is left in the producer's queue; its polling thread is a daemon.

    async def deliver(outputs: list[Any]) -> None:
        """Send a batch's outputs and wait until Kafka confirmed every one; resend them all after a
        failure (their ids are deterministic, so a resent copy collapses downstream).

        Outputs go through librdkafka (:class:`DurableProducer`, ``acks=all``, idempotent), not through
        faust's own producer: faust's per-record ``send`` costs about a millisecond of Python per
        record, librdkafka a few microseconds, and the delivery reports are what this shell waits on
        anyway. faust still consumes, tracks acknowledgements and commits.
        """
        if not outputs:
            return
        for attempt in range(DELIVERY_ATTEMPTS):
            try:
                await producer().send_all([(o.topic, o.value, o.key) for o in outputs])
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s: outputs of a batch not confirmed by Kafka (%s), attempt %d of %d",
                    group,
                    type(exc).__name__,
                    attempt + 1,
                    DELIVERY_ATTEMPTS,
                )
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        raise StageDeliveryFailed(f"{group}: outputs not confirmed after {DELIVERY_ATTEMPTS} attempts")

    async def stage(stream: Any) -> None:
        async for batch in stream.take_events(streams.batch_size, within=streams.batch_window_s):
            try:
                outputs: list[Any] = []
                for event in batch:
                    msg = event.message
                    try:
                        outputs.extend(process(event.value, msg.topic, msg.partition, msg.offset))
                    except RegistryUnavailable:  # transient: hold the batch (streams/transient.py)
                        args = (event.value, msg.topic, msg.partition, msg.offset, group)
                        outputs.extend(await when_registry_back(process, *args))
                # Outputs durable before the inputs are acknowledged (at-least-once, nothing skipped).
                await deliver(outputs)
            except BaseException as exc:
                # faust acknowledges a batch's events when its generator is closed, *whatever*
                # happened in the body: an exception escaping here would let the consumer commit
                # offsets whose outputs Kafka never confirmed. Marking the messages as acknowledged
                # keeps their offsets out of the consumer's acked set, so nothing at or past them is
                # committed and they are processed again after a restart.
                for event in batch:
                    event.message.acked = True
                if isinstance(exc, asyncio.CancelledError):  # shutting down: restart reprocesses
                    raise
                log.critical(
                    "%s: stopping the worker; its inputs will be processed again (%s)",
                    group,
                    type(exc).__name__,
                )
                os._exit(EXIT_UNDELIVERED)  # crash-only: the supervisor restarts the worker
            for event in batch:
                msg = event.message
                positions[(msg.topic, msg.partition)] = msg.offset + 1

    app.agent(sources, name=f"{group}-stage")(stage)

    async def measure_lag() -> None:
        for tp in app.consumer.assignment():
            high = app.consumer.highwater(tp)
            if high is None:
                continue
            done = positions.get((tp.topic, tp.partition))
            if done is None:
                committed = await app.consumer.committed(tp) if hasattr(app.consumer, "committed") else None
                done = committed or 0
            lag.labels(group, tp.topic, str(tp.partition)).set(max(0, high - done))

    app.timer(5.0)(measure_lag)

    @app.on_partitions_assigned.connect
    async def count_rebalance(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assignments.inc()

    telemetry = TelemetryServer(metrics_registry, ready=ready)

    async def serve_metrics() -> None:
        if metrics_port is not None:
            await telemetry.start(streams.metrics_host, metrics_port)

    app.task(serve_metrics)
    return telemetry
