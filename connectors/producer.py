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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from affluent.errors import KafkaUnavailable
from affluent.kafka import producer_config
from affluent.settings import KafkaSettings

Headers = Sequence[tuple[str, bytes]]


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
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="affluent-producer-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Delivery:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                exc = KafkaUnavailable(f"Kafka did not accept a record for {topic}: {err.name()}")
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                delivered = Delivery(msg.topic() or topic, msg.partition() or 0, msg.offset() or 0)
                loop.call_soon_threadsafe(_settle, future, delivered, None)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=list(headers or ()), on_delivery=on_delivery
                )
                break
            except BufferError:
                # The local queue is full: let the poller drain it rather than failing the sender.
                await asyncio.sleep(0.01)
            except Exception as exc:  # KafkaException for a fatal producer state, or bad arguments
                raise KafkaUnavailable(f"cannot enqueue a record for {topic}: {type(exc).__name__}") from None
        try:
            return await asyncio.wait_for(future, self._wait_s)
        except TimeoutError:
            raise KafkaUnavailable(f"no delivery report for {topic} within {self._wait_s:.0f} s") from None

    async def send_all(self, records: Sequence[tuple[str, bytes | None, bytes | None]]) -> list[Delivery]:
        """Send several records concurrently; succeeds only if every one is delivered."""
        return list(await asyncio.gather(*(self.send(t, v, k) for t, v, k in records)))

    def flush(self, timeout_s: float = 10.0) -> int:
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued, then stop the polling thread."""
        with contextlib.suppress(Exception):
            self._producer.flush(timeout_s)
        self._stop.set()
        self._poller.join(timeout=2)


def _settle(future: asyncio.Future[Delivery], result: Delivery | None, exc: BaseException | None) -> None:
    if future.done():  # the waiter gave up (timeout or cancelled sender)
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
