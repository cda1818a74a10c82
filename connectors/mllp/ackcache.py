"""The MLLP ACK cache: the ACK already sent for (sending facility, MSH-10), kept in a compacted topic.

A sender that lost our ACK resends the same message; replaying the stored ACK instead of storing the
message again keeps the raw topic free of duplicates. The cache lives in Kafka (``control.ack``,
compacted and time-bounded) so it survives restarts and is shared by every MLLP instance behind a
load balancer: each instance reads the topic to its end before accepting traffic, then keeps tailing it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from affluent.errors import KafkaUnavailable
from affluent.kafka import make_consumer
from affluent.settings import KafkaSettings
from affluent.topics import CONTROL_ACK
from connectors.producer import DurableProducer

log = logging.getLogger(__name__)


class AckCache:
    def __init__(self, kafka: KafkaSettings, topic: str = CONTROL_ACK, max_entries: int = 1_000_000) -> None:
        self._kafka = kafka
        self.topic = topic
        self._max = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up = threading.Event()

    def start(self, timeout_s: float = 60.0) -> None:
        """Load the topic to its current end (blocking), then tail it in a background thread."""
        self._thread = threading.Thread(target=self._run, name="affluent-ack-cache", daemon=True)
        self._thread.start()
        if not self._caught_up.wait(timeout_s):
            raise KafkaUnavailable(f"could not read {self.topic} to its end within {timeout_s:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._entries.get(key)

    def remember(self, key: str, acks: bytes) -> None:
        with self._lock:
            self._entries[key] = acks
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    async def store(self, producer: DurableProducer, key: str, acks: bytes) -> None:
        await producer.send(self.topic, acks, key.encode("utf-8"))
        self.remember(key, acks)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _run(self) -> None:
        consumer = make_consumer(self._kafka, group_id=f"affluent-ack-cache-{uuid.uuid4().hex[:12]}")
        try:
            ends = self._assign(consumer)
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    key = msg.key()
                    if key is not None:
                        value = msg.value()
                        if value is None:
                            with self._lock:
                                self._entries.pop(key.decode("utf-8", "replace"), None)
                        else:
                            self.remember(key.decode("utf-8", "replace"), value)
                    partition = msg.partition()
                    offset = msg.offset()
                    if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                        del ends[partition]
                if not ends and not self._caught_up.is_set():
                    self._caught_up.set()
        except KafkaException:
            log.exception("ACK cache reader stopped")
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> dict[int, int]:
        """Assign every partition from the beginning; returns the end offsets still to reach."""
        md = consumer.list_topics(self.topic, timeout=10)
        partitions = sorted(md.topics[self.topic].partitions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 30
        for p in partitions:
            while True:
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
            if high > low:
                ends[p] = high
        if not ends:
            self._caught_up.set()
        return ends
