"""A compacted topic held in memory: a thread reads it from the beginning, then keeps tailing it.

The pattern of the MLLP ACK cache (``connectors/mllp/ackcache.py``), generalised: ``start`` blocks until
the topic has been read to the end it had when the reader started, so a worker that starts afterwards
sees every entry written before it; later writes arrive within a poll interval. A tombstone (a record
with no value) removes its key. Keys are UTF-8 text; values are kept as bytes.

Used by the pseudonymize worker for ``control.opposition`` (the registry of objecting patients, which
holds only keyed hashes) and by ``affluent opposition list``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings

log = logging.getLogger(__name__)


class CompactedView:
    """The latest value per key of a compacted topic, read by a background thread."""

    def __init__(self, kafka: KafkaSettings, topic: str, name: str = "compacted-view") -> None:
        self._kafka = kafka
        self.topic = topic
        self.name = name
        self._entries: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up = threading.Event()
        self._failed = threading.Event()

    def start(self, timeout_s: float = 60.0) -> None:
        """Read the topic to its current end (blocking), then tail it in a background thread."""
        self._thread = threading.Thread(target=self._run, name=f"affluent-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._caught_up.wait(0.1):
            if self._failed.is_set() or time.monotonic() > deadline:
                self.stop()
                raise KafkaUnavailable(f"could not read {self.topic} to its end within {timeout_s:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def remember(self, key: str, value: bytes | None) -> None:
        """Apply one record locally (what the reader does; also lets a writer see its own write at once)."""
        with self._lock:
            if value is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = value

    def _run(self) -> None:
        consumer = make_consumer(self._kafka, group_id=f"affluent-{self.name}-{uuid.uuid4().hex[:12]}")
        try:
            ends = self._assign(consumer)
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    key = msg.key()
                    if key is not None:
                        self.remember(key.decode("utf-8", "replace"), msg.value())
                    partition = msg.partition()
                    offset = msg.offset()
                    if partition in ends and offset is not None and offset + 1 >= ends[partition]:
                        del ends[partition]
                if not ends and not self._caught_up.is_set():
                    self._caught_up.set()
        except KafkaException as exc:
            # The error code only: the topic's keys are not logged.
            log.error("reader of %s stopped: %s", self.topic, type(exc).__name__)
            self._failed.set()
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> dict[int, int]:
        """Assign every partition from the beginning; returns the end offsets still to reach."""
        md = consumer.list_topics(self.topic, timeout=10)
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(f"topic {self.topic} not found")
        partitions = sorted(topic.partitions)
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
