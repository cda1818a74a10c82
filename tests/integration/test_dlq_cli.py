"""``affluent dlq list|show`` against the real broker and registry: dead letters written by the shared
writer, read back bounded by time, counted, and one shown in full."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from affluent import dlq
from affluent.core.errors import ConfigError
from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from connectors.runtime import topic_codec
from formats.reasons import ReasonCode
from schemas.deadletter import DeadLetterWriter

pytestmark = pytest.mark.integration


async def write_letters(settings, registry, topic: str) -> list[str]:
    ensure_topics(settings.kafka, [TopicSpec(topic)])
    producer = DurableProducer(settings.kafka)
    try:
        writer = DeadLetterWriter(producer, await topic_codec(registry, topic, "dead_letter"), topic)
        raw_ids = [uuid.uuid4().hex * 2 for _ in range(3)]
        for raw_id, reason in zip(
            raw_ids, [ReasonCode.BAD_TIME, ReasonCode.BAD_TIME, ReasonCode.NO_PATIENT], strict=True
        ):
            assert await writer.write(
                stage="normalize",
                reason_code=reason,
                reason=reason.text,
                location="OBX-14",
                payload=b"MSH|^~\\&|LAB|CHU-DLQ-TEST|HUB|HUB|2026||ORU^R01|X1|P|2.5\rPID|1\r",
                content_type="x-application/hl7-v2+er7",
                source_facility="CHU-DLQ-TEST",
                raw_id=raw_id,
            )
    finally:
        producer.flush()
    return raw_ids


def test_list_counts_and_show_prints_one_message(settings, registry, capsys) -> None:
    topic = f"it.dlq.view.{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC) - timedelta(seconds=5)
    raw_ids = asyncio.run(write_letters(settings, registry, topic))
    lines: list[str] = []
    total = dlq.list_cmd(settings, [topic], before, None, None, None, False, lines.append)
    assert total == 3
    assert [line.split()[2:5] for line in lines[1:3]] == [
        ["bad_time", "CHU-DLQ-TEST", "2"],
        ["no_patient", "CHU-DLQ-TEST", "1"],
    ]
    only = dlq.list_cmd(settings, [topic], before, None, "no_patient", None, True, lines.append)
    assert only == 1 and '"reason_code": "no_patient"' in lines[-1]
    later = dlq.list_cmd(
        settings, [topic], datetime.now(UTC) + timedelta(hours=1), None, None, None, False, print
    )
    assert later == 0  # nothing at or after --since: the time index, not a full read
    shown: list[str] = []
    assert dlq.show_cmd(settings, raw_ids[2][:12], [topic], before, shown.append, who="it-dlq-reader") == 1
    assert any(line.startswith("reason") and "no_patient" in line for line in shown)
    assert shown[-1].splitlines()[-1] == "PID|1"
    from schemas.audit_log import read_entries

    reads = [e for e in read_entries(settings, since=before) if e["who"] == "it-dlq-reader"]
    assert [(e["action"], e["targets"], e["outcome"]) for e in reads] == [("topic_read", [topic], "ok")]
    with pytest.raises(ConfigError, match="no dead letter with raw id"):
        dlq.show_cmd(settings, "f" * 12, [topic], before, shown.append)
