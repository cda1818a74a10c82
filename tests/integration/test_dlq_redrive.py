"""``affluent dlq redrive`` on the real broker and registry: the verdict first, a refusal when the stage
would refuse again for the same reason, and a re-drive that sends the very raw record back, audited."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from affluent import dlq
from affluent.core.errors import ConfigError
from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from connectors.raw import RawMessage
from connectors.runtime import topic_codec
from formats.reasons import ReasonCode
from schemas.audit_log import read_entries
from schemas.catalog import DLQ_NORMALIZE
from schemas.deadletter import DeadLetterWriter
from tests.support.golden import GOLDEN_HL7

pytestmark = pytest.mark.integration

FACILITY = "CHU-REDRIVE-TEST"


async def stored(settings, registry, raw_topic: str, payload: bytes, reason: ReasonCode) -> tuple[str, int]:
    """A raw record in ``raw_topic`` and the dead letter normalize would have written for it."""
    ensure_topics(settings.kafka, [TopicSpec(raw_topic, partitions=1), TopicSpec(DLQ_NORMALIZE)])
    message = RawMessage(
        "hl7v2", "mllp", FACILITY, "LAB", payload, "x-application/hl7-v2+er7", uuid.uuid4().hex
    )
    producer = DurableProducer(settings.kafka)
    try:
        codec = await topic_codec(registry, raw_topic, "raw_message")
        delivery = await producer.send(
            raw_topic, codec.encode(message.record(datetime.now(UTC))), message.key
        )
        dead = DeadLetterWriter(
            producer, await topic_codec(registry, DLQ_NORMALIZE, "dead_letter"), DLQ_NORMALIZE
        )
        assert await dead.write(
            stage="normalize",
            reason_code=reason,
            reason=reason.text,
            payload=payload,
            content_type="x-application/hl7-v2+er7",
            source_facility=FACILITY,
            raw_id=message.raw_id,
            lineage={"topic": raw_topic, "partition": delivery.partition, "offset": delivery.offset},
        )
    finally:
        producer.flush()
    return message.raw_id, delivery.offset


def raw_count(settings, raw_topic: str) -> int:
    from confluent_kafka import TopicPartition

    from affluent.core.kafka import make_consumer

    consumer = make_consumer(settings.kafka, group_id=f"it-redrive-{uuid.uuid4().hex[:6]}")
    try:
        return consumer.get_watermark_offsets(TopicPartition(raw_topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def test_a_message_the_stage_maps_now_is_sent_back_and_audited(settings, registry) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    raw_topic = f"it.redrive.raw.{uuid.uuid4().hex[:8]}"
    good = (GOLDEN_HL7 / "adt_a01_ins_qualified.hl7").read_bytes()
    raw_id, _ = asyncio.run(stored(settings, registry, raw_topic, good, ReasonCode.BAD_TIME))
    lines: list[str] = []
    [verdict] = dlq.redrive_cmd(settings, raw_id[:16], before, "TICKET-42", dry_run=True, out=lines.append)
    assert verdict.reasons_now == frozenset() and verdict.events > 0 and not verdict.refused_again
    assert raw_count(settings, raw_topic) == 1, "a dry run sends nothing"
    dlq.redrive_cmd(settings, raw_id[:16], before, "TICKET-42", out=lines.append, who="it-redriver")
    assert raw_count(settings, raw_topic) == 2
    assert lines[-1].startswith("re-driven: 1 raw record(s)")
    [entry] = [e for e in read_entries(settings, since=before) if e["who"] == "it-redriver"]
    assert (entry["action"], entry["targets"], entry["outcome"]) == ("redrive", [raw_id], "ok")
    assert entry["attributes"]["why"] == "TICKET-42"


def test_refused_again_for_the_same_reason_is_not_sent_unless_forced(settings, registry) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    raw_topic = f"it.redrive.raw.{uuid.uuid4().hex[:8]}"
    no_pid = f"MSH|^~\\&|LAB|{FACILITY}|HUB|HUB|20261201080000||ADT^A01|R1|P|2.5\rEVN|A01|20261201080000\r"
    raw_id, offset = asyncio.run(
        stored(settings, registry, raw_topic, no_pid.encode(), ReasonCode.NO_PATIENT)
    )
    lines: list[str] = []
    with pytest.raises(ConfigError, match="would refuse it again for the same reason"):
        dlq.redrive_cmd(settings, raw_id, before, "retry", out=lines.append, who="it-redriver-2")
    assert lines == [f"{raw_topic}[0]@{offset}: refused again for no_patient (0 events)"]
    assert raw_count(settings, raw_topic) == 1
    dlq.redrive_cmd(settings, raw_id, before, "retry", force=True, out=lines.append, who="it-redriver-2")
    assert raw_count(settings, raw_topic) == 2
    [entry] = [e for e in read_entries(settings, since=before) if e["who"] == "it-redriver-2"]
    assert entry["attributes"]["forced"] == "yes"
