"""The envelope every canonical record carries, and the deterministic event id (design §4).

``event_id`` = SHA-256 over (protocol, sending facility, sending application, the sender's message id,
the index of the event within that message), hex. Replaying a raw record, or receiving the same message
twice, yields the same ids, so consumers and idempotent sinks collapse duplicates. When the door stored a
``content_digest`` attribute (MLLP: MSH-10 can be reused by the sender for another message), the
message id is ``<id>#<digest>``: a different message under a reused id keeps its own events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from formats.clinical.times import ClinicalTime

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class RawContext:
    """What a mapper needs to know of the raw record it maps (the RawMessage and its Kafka position)."""

    raw_id: str
    protocol: str
    connector: str
    facility: str
    application: str
    message_id: str
    received_at: datetime
    topic: str = ""
    partition: int = 0
    offset: int = 0
    # The raw record's attributes (e.g. a device payload's mapping template name).
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_raw(
        cls, raw: dict[str, Any], topic: str = "", partition: int = 0, offset: int = 0
    ) -> RawContext:
        attributes = raw.get("attributes") or {}
        message_id = raw.get("message_id") or raw["raw_id"]
        digest = attributes.get("content_digest")
        return cls(
            raw_id=raw["raw_id"],
            protocol=raw["protocol"],
            connector=raw["connector"],
            facility=raw["source_facility"],
            application=raw["source_application"],
            message_id=f"{message_id}#{digest}" if digest else message_id,
            received_at=raw["received_at"],
            topic=topic,
            partition=partition,
            offset=offset,
            attributes=attributes,
        )


def event_id_of(protocol: str, facility: str, application: str, message_id: str, index: int | str) -> str:
    """The hash itself. ``index`` is best ``<event_type>@<locator>``, e.g.
    ``observation.recorded@OBR[1]/OBX[3]``: a place in the message stays stable when the mapping code
    changes; an ordinal would not."""
    basis = f"{protocol}|{facility}|{application}|{message_id}|{index}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


def event_id(ctx: RawContext, index: int | str) -> str:
    return event_id_of(ctx.protocol, ctx.facility, ctx.application, ctx.message_id, index)


def envelope(ctx: RawContext, index: int | str, event_type: str, when: ClinicalTime | None) -> dict[str, Any]:
    return {
        "event_id": event_id(ctx, index),
        "event_type": event_type,
        "source": {
            "facility": ctx.facility,
            "application": ctx.application,
            "connector": ctx.connector,
            "protocol": ctx.protocol,
        },
        "event_time": when.instant if when else None,
        "event_time_precision": when.precision if when else None,
        "ingest_time": ctx.received_at,
        "schema_version": SCHEMA_VERSION,
        "lineage": {
            "topic": ctx.topic,
            "partition": ctx.partition,
            "offset": ctx.offset,
            "raw_id": ctx.raw_id,
        },
    }
