"""Dead letters: what the hub refused or could not process, with a precise reason, kept in ``dlq.<stage>``.

Writing a dead letter is best effort for a door (the sender already gets a negative ACK and will
resend or fix), but mandatory for a stream stage (there, the dead letter *is* the outcome). Either way
the reason is a code plus a content-free text; the raw bytes travel in their own field, in a
hospital-internal topic, never in a log line.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from affluent.core.errors import AffluentError
from affluent.core.producer import DurableProducer
from formats.reasons import ReasonCode
from schemas.registry import AvroCodec

log = logging.getLogger(__name__)


def dead_letter_record(
    *,
    stage: str,
    reason_code: ReasonCode,
    reason: str,
    location: str = "",
    rule: str = "",
    payload: bytes | None = None,
    content_type: str = "",
    source_facility: str = "",
    source_application: str = "",
    connector: str = "",
    protocol: str = "",
    raw_id: str | None = None,
    event_id: str | None = None,
    attributes: dict[str, str] | None = None,
    lineage: dict[str, Any] | None = None,
    failed_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "reason_code": ReasonCode(reason_code).value,
        "reason": reason,
        "location": location or None,
        "rule": rule or None,
        "raw_id": raw_id,
        "event_id": event_id,
        "lineage": lineage,
        "source": {
            "facility": source_facility,
            "application": source_application,
            "connector": connector,
            "protocol": protocol,
        },
        "failed_at": failed_at or datetime.now(UTC),
        "raw_payload": payload,
        "content_type": content_type or None,
        "attributes": attributes or {},
    }


class DeadLetterWriter:
    def __init__(self, producer: DurableProducer, codec: AvroCodec, topic: str) -> None:
        self.producer = producer
        self.codec = codec
        self.topic = topic

    async def write(self, **fields: Any) -> bool:
        """Write one dead letter; returns False (and logs the reason code only) when Kafka refused it."""
        record = dead_letter_record(**fields)
        key = f"{record['source']['facility']}|{record['source']['application']}".encode()
        try:
            await self.producer.send(self.topic, self.codec.encode(record), key)
        except AffluentError as exc:
            log.warning("dead letter (%s) not written to %s: %s", record["reason_code"], self.topic, exc)
            return False
        return True
