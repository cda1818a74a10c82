"""The raw record every door writes, and the one way to write it durably.

Each door (MLLP, FHIR REST, FHIR pull, devices over HTTP or MQTT) stores the untouched payload with
its source metadata in ``ingest.<kind>.raw`` (schema ``raw_message.avsc``) before it answers the
sender. The rules that must not differ between doors live here:

- ``raw_id`` is deterministic — SHA-256 of ``<protocol>|<facility>|<application>|<message id>``, plus
  ``|<content digest>`` when the door knows the sender's ids can be reused (MLLP: MSH-10 counters are
  reset by reinstalls) — so a resend of the same message by the same sender gets the same id and
  collapses downstream, and a *different* message under a reused id does not;
- the Kafka key is ``<facility>|<application>`` (design §4): one sender's messages stay in order;
- :meth:`RawWriter.write` returns only once Kafka holds the record (``acks=all``); anything else raises
  :class:`affluent.core.errors.KafkaUnavailable`, and the door answers negatively.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from affluent.core.producer import Delivery, DurableProducer
from schemas.registry import AvroCodec


def raw_id_of(protocol: str, facility: str, application: str, message_id: str, digest: str = "") -> str:
    basis = f"{protocol}|{facility}|{application}|{message_id}"
    if digest:
        basis += f"|{digest}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


def stream_key(facility: str, application: str) -> bytes:
    """The raw topics' key: per-sender order, and nothing about a patient."""
    return f"{facility}|{application}".encode()


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One received message as a door saw it; ``message_id`` is the sender's id for it (MSH-10, a FHIR
    resource id + version, a device reading id), or a hash of the payload when the sender gives none."""

    protocol: str  # hl7v2 | fhir | device
    connector: str  # mllp | fhir_rest | fhir_poll | devices_http | devices_mqtt
    facility: str
    application: str
    payload: bytes
    content_type: str
    message_id: str | None = None
    message_type: str | None = None
    peer: str | None = None
    declared_charset: str = "UTF-8"
    charset_mismatch: bool = False
    attributes: Mapping[str, str] = field(default_factory=dict)
    # Set when the sender's id alone cannot tell this message from another (a reused id): part of raw_id.
    digest: str = ""

    @property
    def effective_message_id(self) -> str:
        return self.message_id or hashlib.sha256(self.payload).hexdigest()

    @property
    def raw_id(self) -> str:
        return raw_id_of(
            self.protocol, self.facility, self.application, self.effective_message_id, self.digest
        )

    @property
    def key(self) -> bytes:
        return stream_key(self.facility, self.application)

    def record(self, received_at: datetime) -> dict[str, Any]:
        """The ``RawMessage`` Avro record."""
        return {
            "raw_id": self.raw_id,
            "protocol": self.protocol,
            "connector": self.connector,
            "source_facility": self.facility,
            "source_application": self.application,
            "message_id": self.effective_message_id,
            "message_type": self.message_type,
            "peer": self.peer,
            "received_at": received_at,
            "content_type": self.content_type,
            "declared_charset": self.declared_charset,
            "charset_mismatch": self.charset_mismatch,
            "payload": self.payload,
            "attributes": dict(self.attributes),
        }


class RawWriter:
    """Encodes raw records with the raw topic's registered schema and sends them durably."""

    def __init__(
        self,
        producer: DurableProducer,
        codec: AvroCodec,
        topic: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.producer = producer
        self.codec = codec
        self.topic = topic
        self.clock = clock

    async def write(self, message: RawMessage) -> Delivery:
        value = self.codec.encode(message.record(self.clock()))
        return await self.producer.send(self.topic, value, message.key)

    async def write_all(self, messages: list[RawMessage]) -> list[Delivery]:
        """All or nothing from the sender's point of view: succeeds only if every record is delivered."""
        return await self.producer.send_all(self.encoded(messages))

    def encoded(self, messages: list[RawMessage]) -> list[tuple[str, bytes | None, bytes | None]]:
        """The Kafka records of ``messages``, for a door that sends them in one batch with its own
        bookkeeping records (e.g. an idempotency entry) through ``producer.send_all``."""
        now = self.clock()
        return [(self.topic, self.codec.encode(m.record(now)), m.key) for m in messages]
