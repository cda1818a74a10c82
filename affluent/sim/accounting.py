"""Where did each acknowledged message end up? Reads output topics and matches records to raw ids.

The hub's promise is checkable: every message a sender saw acknowledged must be found downstream —
as canonical (later national) events or as a dead letter with its reason. The demo, the end-to-end
tests and the fault suite all ask this question the same way.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from affluent.core.errors import AffluentError
from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings
from schemas.registry import Registry, decode


def raw_id_of(record: dict[str, Any]) -> str | None:
    envelope = record.get("envelope")
    if isinstance(envelope, dict):
        return str(envelope["lineage"]["raw_id"])
    raw_id = record.get("raw_id")
    return str(raw_id) if raw_id is not None else None


def collect(
    kafka: KafkaSettings,
    registry: Registry,
    topics: Iterable[str],
    raw_ids: set[str],
    timeout_s: float,
    expected: int | None = None,
    quiet_s: float = 3.0,
    progress: Callable[[int, int], None] | None = None,
    key_of: Callable[[dict[str, Any]], str | None] = lambda record: raw_id_of(record),
    start: list[TopicPartition] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Records of `topics` (read from the start) whose `key_of` (by default: the raw id they stem from)
    is in `raw_ids`, grouped by topic.

    Stops at `expected` records, or — when `expected` is None — once every wanted id has at least one
    record and nothing new came for `quiet_s` seconds, or at the timeout. `start` (positions, e.g. from
    :func:`end_offsets` before a run) reads from there instead of the start, skipping older runs.
    """
    consumer = make_consumer(kafka, group_id=f"affluent-accounting-{uuid.uuid4().hex[:8]}")
    assignment: list[TopicPartition] = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None:
            assignment += [TopicPartition(topic, p, 0) for p in md.partitions]
    if start is not None:
        wanted = {tp.topic for tp in assignment}
        assignment = [tp for tp in start if tp.topic in wanted]
    consumer.assign(assignment)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    accounted: set[str] = set()
    count = 0
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and count >= expected:
                break
            if expected is None and accounted >= raw_ids and time.monotonic() - last_new > quiet_s:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.value() is None:
                continue
            record = decode(registry, msg.value() or b"")
            raw_id = key_of(record)
            if raw_id in raw_ids:
                found[msg.topic() or ""].append(record)
                accounted.add(str(raw_id))
                count += 1
                last_new = time.monotonic()
                if progress is not None:
                    progress(len(accounted), count)
    finally:
        consumer.close()
    return found


def end_offsets(consumer: Consumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics` at its current end: where a run's own records will start."""
    positions: list[TopicPartition] = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            continue
        for partition in md.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            positions.append(TopicPartition(topic, partition, high))
    return positions


@dataclass(slots=True)
class Tally:
    """What one run's messages became so far (counts only: no content, safe to print)."""

    sent: int = 0
    acknowledged: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # sender-side answer codes other than AA/CA
    canonical: Counter[str] = field(default_factory=Counter)  # topic -> events
    dead: Counter[str] = field(default_factory=Counter)  # "<dlq topic> <reason_code>" -> dead letters
    national: Counter[str] = field(default_factory=Counter)  # topic -> records of this run
    drops: Counter[str] = field(default_factory=Counter)  # destination -> opposition drops
    # destination -> records a cohort-scoped destination did not get (patient in none of its cohorts)
    held: Counter[str] = field(default_factory=Counter)
    expected_national: int = 0
    missing_messages: int = 0  # acknowledged, found neither canonical nor dead-lettered
    missing_national: int = 0  # national records due (not dropped) that did not arrive

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead.values())

    @property
    def national_records(self) -> int:
        return sum(self.national.values())

    @property
    def complete(self) -> bool:
        return self.missing_messages == 0 and self.missing_national == 0


NationalOf = Callable[[str, dict[str, Any]], list[tuple[str, str, bool]]]
"""(canonical kind, canonical record) -> [(destination, national event id, dropped by opposition)]."""


class Ledger:
    """Follows one run through the pipeline while it happens, from the topics' ends at its start.

    Messages are registered by raw id (and the channel that carries them) before they are sent;
    canonical events and dead letters are matched to them by lineage raw id; the national records each
    canonical event must yield (or the opposition drops it must count) are computed with the
    destinations' own policies and keys by `national_of`, and matched by national event id, since
    national records carry no lineage. Every count is kept per channel, so that a door losing messages
    shows as that door's line, not as a small gap in a total.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: Registry,
        canonical_topics: Iterable[str],
        dlq_topics: Iterable[str],
        national_topics: Iterable[str],
        national_of: NationalOf,
    ) -> None:
        self._registry = registry
        self._canonical = set(canonical_topics)
        self._dlq = set(dlq_topics)
        self._national = set(national_topics)
        self._national_of = national_of
        self._consumer = make_consumer(kafka, group_id=f"affluent-ledger-{uuid.uuid4().hex[:8]}")
        self._consumer.assign(end_offsets(self._consumer, [*self._canonical, *self._dlq, *self._national]))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="affluent-ledger", daemon=True)
        self._channel_of: dict[str, str] = {}  # raw id -> channel
        self._acked: set[str] = set()
        self._reached: set[str] = set()
        self._expected: dict[str, str] = {}  # national event id -> channel
        self._seen: set[tuple[str, str]] = set()  # duplicates (replays, other pipelines) count once
        self._arrived: dict[str, str] = {}  # national event id -> topic, whoever's it is
        self._books: dict[str, Tally] = {}
        self.last_change = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _book(self, channel: str) -> Tally:
        book = self._books.get(channel)
        if book is None:
            book = self._books[channel] = Tally()
        return book

    def sent(self, raw_id: str | None, channel: str = "mllp") -> None:
        with self._lock:
            self._book(channel).sent += 1
            if raw_id is not None:
                self._channel_of[raw_id] = channel

    def answered(self, raw_id: str | None, code: str, acknowledged: bool, channel: str = "mllp") -> None:
        with self._lock:
            if acknowledged and raw_id is not None:
                self._acked.add(raw_id)
                self._book(channel).acknowledged += 1
            elif not acknowledged:
                self._book(channel).refused[code] += 1

    def tally(self) -> Tally:
        """The whole run's figures."""
        with self._lock:
            return self._tally_of(None)

    def tallies(self) -> dict[str, Tally]:
        """The figures of each channel, in the order the channels first sent."""
        with self._lock:
            return {channel: self._tally_of(channel) for channel in self._books}

    def _tally_of(self, channel: str | None) -> Tally:
        books = list(self._books.values()) if channel is None else [self._books[channel]]
        expected = [e for e, c in self._expected.items() if channel is None or c == channel]
        arrived = [self._arrived[e] for e in expected if e in self._arrived]
        acked = [r for r in self._acked if channel is None or self._channel_of.get(r) == channel]
        held = getattr(self._national_of, "held", None)
        total = Tally(
            held=Counter(held() if held is not None and channel is None else {}),
            expected_national=len(expected),
            missing_messages=sum(1 for r in acked if r not in self._reached),
            missing_national=len(expected) - len(arrived),
            national=Counter(arrived),
        )
        for book in books:
            total.sent += book.sent
            total.acknowledged += book.acknowledged
            total.refused.update(book.refused)
            total.canonical.update(book.canonical)
            total.dead.update(book.dead)
            total.drops.update(book.drops)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None or msg.value() is None:
                continue
            try:
                record = decode(self._registry, msg.value() or b"")
            except AffluentError:
                continue  # not a registered record: nobody's accounting
            with self._lock:
                if self._take(msg.topic() or "", record):
                    self.last_change = time.monotonic()

    def _take(self, topic: str, record: dict[str, Any]) -> bool:
        if topic in self._national:
            event_id = str(record["envelope"]["event_id"])
            self._arrived[event_id] = topic
            return event_id in self._expected
        raw_id = raw_id_of(record)
        channel = self._channel_of.get(raw_id) if raw_id is not None else None
        if raw_id is None or channel is None:
            return False
        identity = (
            f"{raw_id} {record['reason_code']}" if topic in self._dlq else str(record["envelope"]["event_id"])
        )
        if (topic, identity) in self._seen:
            return False
        self._seen.add((topic, identity))
        self._reached.add(raw_id)
        book = self._book(channel)
        if topic in self._dlq:
            book.dead[f"{topic} {record['reason_code']}"] += 1
            return True
        book.canonical[topic] += 1
        for destination, event_id, dropped in self._national_of(topic.removeprefix("canonical."), record):
            if dropped:
                book.drops[destination] += 1
                continue
            self._expected.setdefault(event_id, channel)
        return True


def start_group_at_end(
    kafka: KafkaSettings, group: str, topics: Iterable[str], skip_backlog: bool = False
) -> int:
    """Commit the current end of `topics` for a consumer group that has no position there yet, so that
    a new group starts with the records that come next instead of the topics' whole history.
    Partitions the group already has a position on keep it — unless `skip_backlog` (the demo's own
    groups: on a shared broker they may sit far behind, and a demo only follows its own traffic), when
    the group is idle; a group with live members keeps its positions. Returns the partitions set."""
    consumer = make_consumer(kafka, group_id=group)
    try:
        ends = end_offsets(consumer, topics)
        committed = consumer.committed(ends, timeout=10)
        fresh = [end for end, known in zip(ends, committed, strict=True) if known.offset < 0]
        if skip_backlog:
            behind = [end for end, known in zip(ends, committed, strict=True) if known.offset < end.offset]
            try:
                if behind:
                    consumer.commit(offsets=behind, asynchronous=False)
                return len(behind)
            except KafkaException:
                pass  # members are consuming: not ours to move
        if fresh:
            consumer.commit(offsets=fresh, asynchronous=False)
        return len(fresh)
    finally:
        consumer.close()
