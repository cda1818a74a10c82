"""The MLLP ACK cache: the ACK already sent for (sending facility, MSH-10), kept in a compacted topic.

A sender that lost our ACK resends the same message; replaying the stored ACK instead of storing the
message again keeps the raw topic free of duplicates. Each entry also holds the message's content
digest (:func:`connectors.mllp.intake.content_digest`): only a message with the same key *and* the same
digest is a resend; another message under a reused control id is stored (an ACK replayed for it would
say "stored" about something that never was). The cache lives in Kafka (``control.ack``,
compacted and time-bounded) so it survives restarts and is shared by every MLLP instance behind a
load balancer: each instance reads the topic to its end before accepting traffic, then keeps tailing it
(:class:`affluent.core.compacted.CompactedView`). In memory it is bounded: the oldest entries go first.
"""

from __future__ import annotations

from affluent.core.compacted import CompactedView
from affluent.core.settings import KafkaSettings
from affluent.core.topics import CONTROL_ACK

_DIGEST = b"d="  # an entry: d=<32 hex>\n<framed ACKs>; a bare framed ACK is an entry from before digests


def cache_entry(digest: str, reply: bytes) -> bytes:
    return _DIGEST + digest.encode("ascii") + b"\n" + reply


def read_entry(value: bytes) -> tuple[str | None, bytes]:
    """(digest, framed ACKs). Entries written before digests existed give None: such an entry was only
    ever matched on its key, and it ages out with the topic's retention."""
    if value.startswith(_DIGEST):
        digest, _, reply = value[2:].partition(b"\n")
        return digest.decode("ascii", "replace"), reply
    return None, value


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
