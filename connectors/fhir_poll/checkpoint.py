"""Where each (source, resource type) sync stands, and the one rule that moves it.

A checkpoint is the greatest ``meta.lastUpdated`` whose resources are all in Kafka, plus short hashes
of the resources stored *at* that instant. The next search asks ``_lastUpdated=ge<instant>`` and skips
those hashes: resources sharing one timestamp across a page break are neither lost (``gt`` would lose
the ones after the break if the run stopped there) nor stored twice. The hash set is bounded; past the
bound a resumed pass re-stores some boundary resources, which collapse downstream by their raw id.

Checkpoints live in a compacted topic keyed ``<source>|<type>`` (:class:`CheckpointStore`), written
with ``acks=all`` only after every record of the page it covers was acknowledged by Kafka.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from affluent.core.compacted import CompactedView
from affluent.core.producer import DurableProducer
from connectors.fhir_poll.records import Mark

MAX_BOUNDARY_KEYS = 5_000


def instant(text: str) -> datetime:
    """A FHIR instant as an aware datetime, so that ``+01:00`` and ``Z`` forms compare correctly."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def boundary_hash(version_key: str) -> str:
    return hashlib.sha256(version_key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """``last_updated`` is kept as the server wrote it: it goes back into the server's own query."""

    last_updated: str | None = None
    boundary: frozenset[str] = field(default_factory=frozenset)

    def already_stored(self, mark: Mark) -> bool:
        last_updated, key = mark
        if self.last_updated is None or not last_updated:
            return False
        return instant(last_updated) == instant(self.last_updated) and boundary_hash(key) in self.boundary

    def advance(self, marks: Iterable[Mark]) -> Checkpoint:
        """The checkpoint once the resources of ``marks`` are all stored: the latest instant among them
        and this one, with the hashes of what is stored at that instant."""
        latest = self.last_updated
        keys = set(self.boundary)
        for last_updated, key in marks:
            if not last_updated:
                continue
            if latest is None or instant(last_updated) > instant(latest):
                latest, keys = last_updated, set()
            if instant(last_updated) == instant(latest):
                keys.add(boundary_hash(key))
        if len(keys) > MAX_BOUNDARY_KEYS:
            keys = set(sorted(keys)[:MAX_BOUNDARY_KEYS])
        return Checkpoint(latest, frozenset(keys))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"v": 1, "last_updated": self.last_updated, "boundary": sorted(self.boundary)},
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> Checkpoint:
        if not data:
            return cls()
        doc = json.loads(data)
        return cls(doc.get("last_updated"), frozenset(doc.get("boundary") or ()))


def checkpoint_key(source: str, rtype: str) -> str:
    return f"{source}|{rtype}"


@dataclass(frozen=True, slots=True)
class PendingExport:
    """A Bulk export kicked off and not finished yet: a restarted puller polls it instead of asking
    the server to start the (possibly hours-long) export again."""

    status_url: str
    types: tuple[str, ...]
    since: str | None

    def to_bytes(self) -> bytes:
        doc = {"v": 1, "status_url": self.status_url, "types": list(self.types), "since": self.since}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | None) -> PendingExport | None:
        if not data:
            return None
        doc = json.loads(data)
        return cls(doc["status_url"], tuple(doc["types"]), doc.get("since"))


def export_key(source: str) -> str:
    return f"{source}|$export"  # "$" cannot start a FHIR type name: no clash with checkpoint keys


class CheckpointStore:
    """Checkpoints read back from the compacted topic at start, written durably as the sync moves."""

    def __init__(self, view: CompactedView, producer: DurableProducer) -> None:
        self.view = view
        self.producer = producer

    def get(self, source: str, rtype: str) -> Checkpoint:
        return Checkpoint.from_bytes(self.view.get(checkpoint_key(source, rtype)))

    async def put(self, source: str, rtype: str, checkpoint: Checkpoint) -> None:
        """Returns once Kafka holds the checkpoint (``acks=all``); raises KafkaUnavailable otherwise."""
        key = checkpoint_key(source, rtype)
        value = checkpoint.to_bytes()
        await self.producer.send(self.view.topic, value, key.encode("utf-8"))
        self.view.remember(key, value)

    def pending_export(self, source: str) -> PendingExport | None:
        return PendingExport.from_bytes(self.view.get(export_key(source)))

    async def set_pending_export(self, source: str, pending: PendingExport | None) -> None:
        key = export_key(source)
        value = pending.to_bytes() if pending is not None else None
        await self.producer.send(self.view.topic, value, key.encode("utf-8"))
        self.view.remember(key, value)

    async def reset(self, source: str, rtype: str) -> None:
        """A tombstone: the next pass of this type starts from the source's ``since`` (a full resync)."""
        key = checkpoint_key(source, rtype)
        await self.producer.send(self.view.topic, None, key.encode("utf-8"))
        self.view.remember(key, None)
