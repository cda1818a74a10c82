"""The durable producer every door shares: ``await send(...)`` returns only once Kafka holds the record.

Doors acknowledge their senders after this call returns, so its contract is the hub's promise:
a returned :class:`Delivery` means every in-sync replica has the record (``acks=all``, idempotent
producer); anything else raises :class:`KafkaUnavailable` and the door answers negatively. librdkafka
reports deliveries on a polling thread; this class hands each report to the asyncio loop that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import producer_config
from affluent.core.settings import KafkaSettings

Headers = Sequence[tuple[str, bytes]]
Report = tuple["asyncio.Future[Delivery]", "Delivery | None", "BaseException | None"]


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class DurableProducer:
    """An asyncio-facing, thread-safe wrapper over one confluent-kafka Producer."""

    def __init__(self, kafka: KafkaSettings, **overrides: Any) -> None:
        self._kafka = kafka
        self._producer = Producer(producer_config(kafka, **overrides))
        # A margin over librdkafka's own delivery timeout: its report should always come first.
        self._wait_s = kafka.delivery_timeout_ms / 1000 + 5
        self._reports: list[Report] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="affluent-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the reports gathered by one poll to the loop in a single wake-up.

        One ``call_soon_threadsafe`` per report would wake the loop (and fight for the GIL) twice per
        MLLP message; batching keeps that cost per poll, not per record.
        """
        if not self._reports or self._loop is None:
            return
        reports, self._reports = self._reports, []
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(_settle_many, reports)

    def enqueue(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Delivery]:
        """Hand a record to librdkafka now; the returned future settles on its delivery report.

        Must be called from the event loop that awaits the futures (one loop per producer).
        Raises BufferError when librdkafka's local queue is full.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[Delivery] = loop.create_future()
        reports = self._reports_ref

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                exc = KafkaUnavailable(f"Kafka did not accept a record for {topic}: {err.name()}")
                reports().append((future, None, exc))
            else:
                delivered = Delivery(msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
                reports().append((future, delivered, None))

        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers or ()), on_delivery=on_delivery
            )
        except BufferError:
            raise
        except Exception as exc:  # KafkaException for a fatal producer state, or bad arguments
            raise KafkaUnavailable(f"cannot enqueue a record for {topic}: {type(exc).__name__}") from None
        # Safety net: librdkafka always reports within delivery.timeout.ms; this fires only if it did not.
        timer = loop.call_later(self._wait_s, _expire, future, topic, self._wait_s)
        future.add_done_callback(lambda _f: timer.cancel())
        return future

    def send_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """Hand a record to librdkafka and return at once, for records nobody must wait for (a door's
        idempotency entry): same durable settings, no future, no timer. A failed delivery calls
        ``on_failure`` on the polling thread (count it; never block there). Raises KafkaUnavailable
        when librdkafka refuses the record outright, BufferError when its queue is full."""

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and on_failure is not None:
                on_failure()

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError:
            raise
        except Exception as exc:
            raise KafkaUnavailable(f"cannot enqueue a record for {topic}: {type(exc).__name__}") from None

    def _reports_ref(self) -> list[Report]:
        return self._reports

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Delivery:
        while True:
            try:
                future = self.enqueue(topic, value, key, headers)
                break
            except BufferError:
                # The local queue is full: let the poller drain it rather than failing the sender.
                await asyncio.sleep(0.01)
        return await future

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> list[Delivery]:
        """Send several records together; succeeds only if every one is delivered.

        All are handed to librdkafka before waiting, so they share one round-trip to the brokers.
        """
        futures: list[asyncio.Future[Delivery]] = []
        for topic, value, key in records:
            while True:
                try:
                    futures.append(self.enqueue(topic, value, key))
                    break
                except BufferError:
                    await asyncio.sleep(0.01)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Delivery)]

    def flush(self, timeout_s: float = 10.0) -> int:
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then stop the polling thread."""
        with contextlib.suppress(Exception):
            self._producer.flush(timeout_s)
        self._stop.set()
        self._poller.join(timeout=2)


def _settle_many(reports: list[Report]) -> None:
    for future, result, exc in reports:
        if future.done():  # the waiter gave up (timeout or cancelled sender)
            continue
        if exc is not None:
            future.set_exception(exc)
        elif result is not None:
            future.set_result(result)


def _expire(future: asyncio.Future[Delivery], topic: str, wait_s: float) -> None:
    if not future.done():
        future.set_exception(KafkaUnavailable(f"no delivery report for {topic} within {wait_s:.0f} s"))
