"""The stage shell shared by the stream workers: consume a batch, process it, confirm its outputs, then
mark its inputs done.

Every stage (normalize, pseudonymize) is a pure-ish ``process`` function — a record's value and position
in, outputs (``topic``, ``key``, ``value``) out, never raising — wrapped by this one loop, so the rule
"a batch's outputs are confirmed by Kafka before its inputs count as processed" lives here once.

The loop is synchronous over librdkafka (confluent-kafka), in the style of quix-streams: the consumer
prefetches in librdkafka's threads while the loop maps and encodes, and a batch's outputs are handed to
one idempotent ``acks=all`` producer and waited for with a single ``flush``. An earlier version ran the
stages as faust-streaming agents; on this box faust's per-event machinery (aiokafka's Python fetcher,
events, acks, one future per output) cost more CPU than the mapping itself — see BENCHMARKS.md and
docs/architecture.md. Processing is at-least-once and correctness comes from deterministic event ids:

* an input's offset is *stored* only after every output of its batch is confirmed; librdkafka commits
  stored offsets in the background, on a rebalance (before giving a partition away) and on close;
* a registry outage is transient: the record is tried again until the registry answers, the batch
  held (streams/transient.py) — never dead-lettered, nothing stored meanwhile;
* outputs Kafka does not confirm are resent whole (6 attempts, backing off); if that fails the process
  exits with 75 without storing the batch's offsets (crash-only: ``affluent run`` or Kubernetes restarts
  it and the batch is read again);
* SIGTERM/SIGINT end the loop between batches: the current batch finishes, its offsets are stored,
  the consumer commits and leaves the group (its partitions move at once, no session timeout).

Topics are created by affluent (``auto.create.topics.enable`` is off on our brokers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from affluent.core.errors import AffluentError, RegistryUnavailable
from affluent.core.kafka import consumer_config, producer_config
from affluent.core.metrics import consumer_lag, rebalances
from affluent.core.settings import KafkaSettings, StreamsSettings
from affluent.core.telemetry import ReadyCheck, TelemetryServer
from streams.contract import Output, StageSpec
from streams.transient import when_registry_back

log = logging.getLogger(__name__)

# A batch's outputs are resent this many times (backing off up to 10 s) before the worker gives up.
DELIVERY_ATTEMPTS = 6
EXIT_UNDELIVERED = 75  # EX_TEMPFAIL: restart me
OUTPUT_LINGER_MS = 5
LAG_EVERY_S = 5.0


class StageDeliveryFailed(AffluentError):
    """Kafka did not confirm a batch's outputs after every attempt."""


class BatchProducer:
    """Sends a batch of outputs and returns once Kafka confirmed every one (``acks=all``, idempotent).

    One delivery callback for the whole producer and one ``flush`` per batch: no future, timer or
    closure per record — those cost more than librdkafka itself.
    """

    def __init__(self, kafka: KafkaSettings, group: str) -> None:
        self._producer = Producer(producer_config(kafka, **{"linger.ms": OUTPUT_LINGER_MS}))
        self._timeout_s = kafka.delivery_timeout_ms / 1000 + 5
        self._group = group
        self._failed: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(err)

    def _send_once(self, outputs: Sequence[Output]) -> None:
        self._failed = []
        produce, callback = self._producer.produce, self._on_delivery
        for out in outputs:
            while True:
                try:
                    produce(out.topic, out.value, out.key, on_delivery=callback)
                    break
                except BufferError:  # librdkafka's local queue is full: let it drain
                    self._producer.poll(0.05)
        left = self._producer.flush(self._timeout_s)
        if left or self._failed:
            reason = self._failed[0].name() if self._failed else f"{left} records without a report"
            raise StageDeliveryFailed(f"{self._group}: Kafka did not confirm a batch's outputs ({reason})")

    def deliver(self, outputs: Sequence[Output], sleep: Callable[[float], None] = time.sleep) -> None:
        """Send ``outputs`` until Kafka confirmed all of them; resend them all after a failure (their ids
        are deterministic, so a resent copy collapses downstream). Raises after the last attempt."""
        if not outputs:
            return
        for attempt in range(DELIVERY_ATTEMPTS):
            try:
                self._send_once(outputs)
                return
            except (StageDeliveryFailed, KafkaException) as exc:
                log.warning(
                    "%s: outputs of a batch not confirmed by Kafka (%s), attempt %d of %d",
                    self._group,
                    type(exc).__name__,
                    attempt + 1,
                    DELIVERY_ATTEMPTS,
                )
                if attempt + 1 < DELIVERY_ATTEMPTS:
                    sleep(min(10.0, 0.5 * 2**attempt))
        raise StageDeliveryFailed(f"{self._group}: outputs not confirmed after {DELIVERY_ATTEMPTS} attempts")

    def close(self) -> None:
        self._producer.flush(10)


def next_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    """The offsets to store after a batch: one past the last message of each partition."""
    last: dict[tuple[str, int], int] = {}
    for msg in messages:
        last[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in last.items()]


class StageWorker:
    """One stage's consume → process → deliver → store loop, with its metrics and telemetry server."""

    def __init__(
        self,
        spec: StageSpec,
        kafka: KafkaSettings,
        streams: StreamsSettings,
        metrics_registry: CollectorRegistry,
        metrics_port: int | None,
        ready: ReadyCheck | None = None,
    ) -> None:
        self.spec = spec
        self.kafka = kafka
        self.streams = streams
        self.metrics_port = metrics_port
        self.telemetry = TelemetryServer(metrics_registry, ready=ready)
        self._lag = consumer_lag(metrics_registry)
        self._rebalances = rebalances(metrics_registry).labels(spec.group)
        self._stop = threading.Event()
        self._telemetry_loop: asyncio.AbstractEventLoop | None = None
        self.consumer = Consumer(
            consumer_config(
                kafka,
                spec.group,
                **{
                    # Offsets are stored by this loop after delivery; librdkafka commits what is stored
                    # (every second, before a partition is given away in a rebalance, and on close).
                    "enable.auto.commit": True,
                    "enable.auto.offset.store": False,
                    "auto.commit.interval.ms": 1000,
                    "partition.assignment.strategy": "cooperative-sticky",
                    "queued.max.messages.kbytes": 16384,
                    # How long a dead worker's partitions wait before the group hands them over.
                    "session.timeout.ms": streams.session_timeout_ms,
                },
            )
        )
        self.producer = BatchProducer(kafka, spec.group)

    def stop(self) -> None:
        """Ask the loop to end after the batch in hand (signal-safe: only sets an event)."""
        self._stop.set()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalances.inc()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._lag.labels(self.spec.group, tp.topic, str(tp.partition)).set(0)

    def measure_lag(self) -> None:
        """Records behind the high watermark per assigned partition (from the last fetch: no request)."""
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned) if assigned else []
        except KafkaException:
            return
        for tp in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            done = tp.offset if tp.offset >= 0 else high
            self._lag.labels(self.spec.group, tp.topic, str(tp.partition)).set(max(0, high - done))

    def run_batch(self, messages: list[Message]) -> int:
        """Process one consumed batch; returns how many records it read. Raises StageDeliveryFailed."""
        outputs: list[Output] = []
        done: list[Message] = []
        process = self.spec.process
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("%s: consumer error %s", self.spec.group, err.name())
                continue
            position = (msg.value(), msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            try:
                outputs.extend(process(*position))
            except RegistryUnavailable:  # transient: hold the batch (streams/transient.py)
                outputs.extend(when_registry_back(process, *position, self.spec.group))
            done.append(msg)
        # Outputs durable before the inputs count as processed (at-least-once, nothing skipped).
        self.producer.deliver(outputs)
        if done:
            self.consumer.store_offsets(offsets=next_offsets(done))
        return len(done)

    def next_batch(self) -> list[Message]:
        """What librdkafka has already fetched, up to ``batch_size``; when it holds nothing, wait at most
        ``batch_window_s`` for the first record and take whatever came with it.

        ``consume(n, timeout)`` waits until it has ``n`` records or the timeout passed, so a fixed window
        would add itself to every record's latency at any rate below ``n`` per window (50 ms per stage,
        the bulk of the pipeline's latency at a few hundred messages per second). Batches still grow
        with the load: while one batch is processed and flushed, the next accumulates in the prefetch.
        """
        size = self.streams.batch_size
        batch = self.consumer.consume(size, 0)
        if batch:
            return batch
        batch = self.consumer.consume(1, self.streams.batch_window_s)
        if batch and size > 1:
            batch.extend(self.consumer.consume(size - 1, 0))
        return batch

    def run(self) -> int:
        """Consume until stopped; returns the process exit code."""
        self._start_telemetry()
        self.consumer.subscribe(list(self.spec.sources), on_assign=self._on_assign, on_revoke=self._on_revoke)
        next_lag = time.monotonic() + LAG_EVERY_S
        try:
            while not self._stop.is_set():
                batch = self.next_batch()
                if batch:
                    try:
                        self.run_batch(batch)
                    except (StageDeliveryFailed, KafkaException) as exc:
                        # Nothing of this batch is stored: it is read again after the restart.
                        log.critical(
                            "%s: stopping the worker; its inputs will be processed again (%s)",
                            self.spec.group,
                            type(exc).__name__,
                        )
                        os._exit(EXIT_UNDELIVERED)  # crash-only: the supervisor restarts the worker
                if time.monotonic() >= next_lag:
                    self.measure_lag()
                    next_lag = time.monotonic() + LAG_EVERY_S
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.producer.close()
        try:
            self.consumer.close()  # commits the stored offsets and leaves the group
        except (KafkaException, RuntimeError) as exc:
            log.warning("%s: consumer did not close cleanly (%s)", self.spec.group, type(exc).__name__)
        loop = self._telemetry_loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self.telemetry.stop(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)

    def _start_telemetry(self) -> None:
        """/metrics, /health and /ready on their own thread and event loop, beside the blocking loop."""
        if self.metrics_port is None:
            return
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.telemetry.start(self.streams.metrics_host, self.metrics_port or 0))
            started.set()
            loop.run_forever()

        threading.Thread(target=serve, name=f"{self.spec.group}-telemetry", daemon=True).start()
        started.wait(10)
        self._telemetry_loop = loop


def run_until_signalled(worker: StageWorker, on_stop: Sequence[Callable[[], Any]] = ()) -> None:
    """Run ``worker`` in the foreground until SIGINT/SIGTERM, then stop cleanly (finish the batch in hand,
    store and commit its offsets, leave the group)."""

    def ask_stop(_signum: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)
    try:
        worker.run()
    finally:
        for hook in on_stop:
            hook()
