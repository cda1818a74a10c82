"""The MLLP ACK cache: the ACK already sent for (sending facility, MSH-10), kept in a compacted topic.

A sender that lost our ACK resends the same message; replaying the stored ACK instead of storing the
message again keeps the raw topic free of duplicates. The cache lives in Kafka (``control.ack``,
compacted and time-bounded) so it survives restarts and is shared by every MLLP instance behind a
load balancer: each instance reads the topic to its end before accepting traffic, then keeps tailing it
(:class:`affluent.core.compacted.CompactedView`). In memory it is bounded: the oldest entries go first.
"""

from __future__ import annotations

from affluent.core.compacted import CompactedView
from affluent.core.settings import KafkaSettings
from affluent.core.topics import CONTROL_ACK

# A door holding all of them measured 518–534 MiB resident (`make soak`, BENCHMARKS.md), its base ~100 MiB.
MAX_ENTRIES = 1_000_000


class AckCache(CompactedView):
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str = CONTROL_ACK,
        max_entries: int = MAX_ENTRIES,
        name: str = "ack-cache",
    ) -> None:
        super().__init__(kafka, topic, name=name)
        self._max = max_entries

    def remember(self, key: str, value: bytes | None) -> None:
        super().remember(key, value)
        with self._lock:
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]  # dicts keep insertion order: oldest first
