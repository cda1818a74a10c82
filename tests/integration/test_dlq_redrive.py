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


def ingest_dead_letter(settings, registry, **fields) -> None:
    """One dead letter in dlq.ingest, as a door writes it, confirmed by Kafka."""
    from affluent.core.topics import DLQ_INGEST

    async def write() -> None:
        producer = DurableProducer(settings.kafka)
        try:
            codec = await topic_codec(registry, DLQ_INGEST, "dead_letter")
            assert await DeadLetterWriter(producer, codec, DLQ_INGEST).write(stage="ingest", **fields)
        finally:
            producer.flush()

    asyncio.run(write())


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
    assert lines[-1].startswith(f"re-driven: 1 record(s) sent again to {raw_topic} ")
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


def test_a_device_payload_the_mqtt_door_dead_lettered_is_stored_after_a_template_fix(
    settings, registry, tmp_path
) -> None:
    """The MQTT door acknowledged the broker and dead-lettered a payload with a unit its template did not
    know: the gateway will not send it again. A one-line ``units:`` entry in the template, and the
    re-drive stores it as the door would have (same raw id), audited."""
    from affluent.core.settings import DeviceMqttSettings, DeviceSettings
    from affluent.core.topics import DLQ_INGEST, INGEST_DEVICE_RAW
    from connectors.devices.intake import CONTENT_TYPE, payload_raw_id
    from formats.devices.templates import TEMPLATES_DIR
    from tests.support.devices import sample

    before = datetime.now(UTC) - timedelta(seconds=5)
    run = uuid.uuid4().hex[:8]
    topic = f"it-redrive-{run}/scale"
    doc = sample("scale-nested").replace(b'"lb"', b'"livres"').replace(b"SC-7781", f"SC-{run}".encode())
    assert b"livres" in doc
    raw_id = payload_raw_id(topic, "scale-nested", doc)
    ensure_topics(settings.kafka, [TopicSpec(DLQ_INGEST), TopicSpec(INGEST_DEVICE_RAW)])

    ingest_dead_letter(
        settings,
        registry,
        reason_code=ReasonCode.UNKNOWN_UNIT,
        reason="the unit at @.unit is not a known unit",
        location="$.readings[0]:weight",
        rule="template scale-nested",
        payload=doc,
        content_type=CONTENT_TYPE,
        source_facility=topic,
        source_application="scale-nested",
        raw_id=raw_id,
        connector="devices_mqtt",
        protocol="device",
    )
    templates = tmp_path / "templates"
    templates.mkdir()
    for shipped in TEMPLATES_DIR.glob("*.yaml"):
        (templates / shipped.name).write_bytes(shipped.read_bytes())
    mqtt = DeviceMqttSettings(topics={f"it-redrive-{run}/scale": "scale-nested"})
    configured = settings.model_copy(update={"devices": DeviceSettings(templates_dir=templates, mqtt=mqtt)})
    lines: list[str] = []
    with pytest.raises(ConfigError, match="would refuse it again"):
        dlq.redrive_cmd(configured, raw_id, before, "T-1", out=lines.append, who="it-redriver-3")
    assert lines[-1].endswith("refused again for unknown_unit (0 readings)")

    with (templates / "scale-nested.yaml").open("a", encoding="utf-8") as fix:
        fix.write("units: {livres: '[lb_av]'}\n")  # the one-line mapping change
    ends_before = raw_end(settings, INGEST_DEVICE_RAW)
    dlq.redrive_cmd(configured, raw_id[:12], before, "T-1", out=lines.append, who="it-redriver-3")
    assert lines[-2].endswith("maps now (2 readings); was refused for unknown_unit")
    assert lines[-1].startswith(f"re-driven: 1 record(s) sent again to {INGEST_DEVICE_RAW} ")
    stored = stored_raw_ids(settings, registry, INGEST_DEVICE_RAW, ends_before)
    assert stored == [raw_id]  # the door's raw id: its readings keep their event ids
    [entry] = [e for e in read_entries(settings, since=before) if e["who"] == "it-redriver-3"]
    assert (entry["action"], entry["targets"]) == ("redrive", [raw_id])


def test_a_pseudonymize_dead_letter_sends_its_canonical_record_back(settings, registry, monkeypatch) -> None:
    from affluent.core.topics import INGEST_HL7V2_RAW
    from schemas.catalog import CANONICAL_OBSERVATION, DLQ_PSEUDONYMIZE
    from streams.pseudonymize.worker import KEY_FILE_ENV
    from tests.support.pipeline import KEY_FILE

    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    before = datetime.now(UTC) - timedelta(seconds=5)
    good = next(p.read_bytes() for p in sorted(GOLDEN_HL7.glob("oru*.hl7")))
    ensure_topics(settings.kafka, [TopicSpec(CANONICAL_OBSERVATION), TopicSpec(DLQ_PSEUDONYMIZE)])
    normalizer = dlq._normalizer(settings)

    async def stored_event() -> tuple[str, int, int]:
        producer = DurableProducer(settings.kafka)
        try:
            message = RawMessage(
                "hl7v2", "mllp", FACILITY, "LAB", good, "x-application/hl7-v2+er7", uuid.uuid4().hex
            )
            codec = await topic_codec(registry, INGEST_HL7V2_RAW, "raw_message")
            raw = codec.encode(message.record(datetime.now(UTC)))
            [first] = [
                o for o in normalizer.process(raw, INGEST_HL7V2_RAW, 0, 0) if o.topic == CANONICAL_OBSERVATION
            ][:1]
            delivery = await producer.send(CANONICAL_OBSERVATION, first.value, first.key)
            dead = DeadLetterWriter(
                producer, await topic_codec(registry, DLQ_PSEUDONYMIZE, "dead_letter"), DLQ_PSEUDONYMIZE
            )
            assert await dead.write(
                stage="pseudonymize",
                reason_code=ReasonCode.NATIONAL_SCHEMA,
                reason="no registered schema for national.hdh.observation.v1",
                content_type="avro/binary",
                source_facility=FACILITY,
                raw_id=message.raw_id,
                lineage={
                    "topic": CANONICAL_OBSERVATION,
                    "partition": delivery.partition,
                    "offset": delivery.offset,
                },
            )
            return message.raw_id, delivery.partition, delivery.offset
        finally:
            producer.flush()

    raw_id, partition, offset = asyncio.run(stored_event())
    lines: list[str] = []
    [verdict] = dlq.redrive_cmd(settings, raw_id, before, "T-2", dry_run=True, out=lines.append)
    assert (verdict.topic, verdict.partition, verdict.offset) == (CANONICAL_OBSERVATION, partition, offset)
    assert verdict.reasons_now == frozenset() and verdict.events >= 1 and verdict.what == "national records"
    dlq.redrive_cmd(settings, raw_id, before, "T-2", out=lines.append, who="it-redriver-4")
    assert lines[-1].startswith(f"re-driven: 1 record(s) sent again to {CANONICAL_OBSERVATION} ")


def test_a_message_refused_at_an_answering_door_is_not_re_driven(settings, registry) -> None:

    before = datetime.now(UTC) - timedelta(seconds=5)
    raw_id = uuid.uuid4().hex * 2

    ingest_dead_letter(
        settings,
        registry,
        reason_code=ReasonCode.NO_MSH,
        reason="no MSH",
        payload=b"garbage",
        content_type="x-application/hl7-v2+er7",
        source_facility=FACILITY,
        raw_id=raw_id,
        connector="mllp",
        protocol="hl7v2",
    )
    with pytest.raises(ConfigError, match="the sender must send it again"):
        dlq.redrive_cmd(settings, raw_id, before, "T-3", out=lambda _: None)


def raw_end(settings, topic: str) -> list[tuple[int, int]]:
    from confluent_kafka import TopicPartition

    from affluent.core.kafka import make_consumer

    consumer = make_consumer(settings.kafka, group_id=f"it-redrive-{uuid.uuid4().hex[:6]}")
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [
            (p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in sorted(parts)
        ]
    finally:
        consumer.close()


def stored_raw_ids(settings, registry, topic: str, start: list[tuple[int, int]]) -> list[str]:
    from affluent.core.ranges import Span, read_spans
    from schemas.registry import decode

    ends = dict(raw_end(settings, topic))
    spans = [Span(topic, p, offset, ends[p]) for p, offset in start if ends[p] > offset]
    return [decode(registry, r.value)["raw_id"] for r in read_spans(settings.kafka, spans) if r.value]
