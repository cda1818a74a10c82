"""``affluent replay --stage normalize`` on the real broker and registry: the raw records of a time range
go through the stage again and its outputs are written, audited, without any consumer group moved."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from affluent.core.topics import INGEST_HL7V2_RAW
from affluent.replay import replay
from affluent.sim import synthetic
from connectors.runtime import topic_codec
from schemas.audit_log import read_entries
from tests.support.pipeline import door_raw

pytestmark = pytest.mark.integration


async def store(settings, registry, payloads: list[bytes]) -> None:
    ensure_topics(settings.kafka, [TopicSpec(INGEST_HL7V2_RAW)])
    producer = DurableProducer(settings.kafka)
    try:
        codec = await topic_codec(registry, INGEST_HL7V2_RAW, "raw_message")
        for payload in payloads:
            message = door_raw(payload, with_digest=True)
            await producer.send(
                INGEST_HL7V2_RAW, codec.encode(message.record(datetime.now(UTC))), message.key
            )
    finally:
        producer.flush()


def test_a_time_range_is_normalized_again_and_the_run_audited(settings, registry) -> None:
    payloads = synthetic.messages(6, seed=int(uuid.uuid4().int % 10**6), patients=3)
    start = datetime.now(UTC) - timedelta(milliseconds=200)
    asyncio.run(store(settings, registry, payloads))
    time.sleep(0.3)
    end = datetime.now(UTC)
    lines: list[str] = []
    tally = replay(
        settings, "normalize", start, end, ["hl7v2"], out=lines.append, show_progress=False, who="it-replayer"
    )
    assert tally.read >= len(payloads)  # other tests may write into the same seconds of the shared topic
    assert sum(tally.events.values()) + sum(tally.dead.values()) >= len(payloads)
    assert tally.events["patient"] >= 1
    assert lines[0].startswith(f"replayed {tally.read:,} raw records")
    [entry] = [e for e in read_entries(settings, since=start) if e["who"] == "it-replayer"]
    assert (entry["action"], entry["targets"], entry["outcome"]) == ("replay", [INGEST_HL7V2_RAW], "ok")


def test_a_time_range_of_canonical_records_is_pseudonymized_again(settings, registry, monkeypatch) -> None:
    from affluent.dlq import _normalizer
    from schemas.catalog import CANONICAL_TOPICS
    from streams.pseudonymize.worker import KEY_FILE_ENV
    from tests.support.pipeline import KEY_FILE, door_raw

    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    ensure_topics(settings.kafka, [TopicSpec(t) for t in CANONICAL_TOPICS])
    payloads = synthetic.messages(4, seed=int(uuid.uuid4().int % 10**6), patients=2)
    normalizer = _normalizer(settings)

    async def canonical() -> int:
        producer = DurableProducer(settings.kafka)
        written = 0
        try:
            codec = await topic_codec(registry, INGEST_HL7V2_RAW, "raw_message")
            for n, payload in enumerate(payloads):
                message = door_raw(payload)
                raw = codec.encode(message.record(datetime.now(UTC)))
                for output in normalizer.process(raw, INGEST_HL7V2_RAW, 0, n):
                    if output.topic in CANONICAL_TOPICS:
                        await producer.send(output.topic, output.value, output.key)
                        written += 1
        finally:
            producer.flush()
        return written

    start = datetime.now(UTC) - timedelta(milliseconds=200)
    written = asyncio.run(canonical())
    time.sleep(0.3)
    end = datetime.now(UTC)
    lines: list[str] = []
    tally = replay(
        settings, "pseudonymize", start, end, out=lines.append, show_progress=False, who="it-replayer-2"
    )
    assert written > 0 and tally.read >= written
    assert any(topic.startswith("national.hdh.") for topic in tally.events), tally.events
    assert lines[0].startswith(f"replayed {tally.read:,} canonical records")
    [entry] = [e for e in read_entries(settings, since=start) if e["who"] == "it-replayer-2"]
    assert entry["action"] == "replay" and set(entry["targets"]) == set(CANONICAL_TOPICS)
