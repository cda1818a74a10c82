"""HTTPS door → ingest.device.raw → a real normalize worker (own consumer group, reading only this
test's raw topic) → canonical.observation, with patients from the device registry in control.devices.

The canonical and DLQ topics are shared: they are read from their end as it was before the test, and
records are picked by the raw ids this test produced. Devices have unique synthetic ids.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from affluent.core.kafka import make_consumer
from affluent.core.settings import DeviceSettings, DeviceToken, KafkaSettings, Settings
from affluent.devices_cli import link
from affluent.sim.synthetic import HOSPITAL_OID
from connectors.devices.intake import token_hash
from connectors.devices.service import DeviceService
from formats.devices.registry import Link
from schemas.catalog import DLQ_NORMALIZE
from schemas.registry import Registry, decode
from streams.normalize.device import FLAG_SYSTEM
from tests.support.devices import normalize_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "test-e2e-token-not-a-secret"
OBSERVATIONS = "canonical.observation"


def ends(kafka: KafkaSettings, topics: list[str]) -> list[TopicPartition]:
    consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    try:
        out = []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                out.append(TopicPartition(topic, p, high))
        return out
    finally:
        consumer.close()


def collect(
    kafka: KafkaSettings, registry: Registry, start: list[TopicPartition], raw_ids: set[str], expected: int
):
    consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    consumer.assign(start)
    found: dict[str, list[dict]] = {OBSERVATIONS: [], DLQ_NORMALIZE: []}
    deadline = time.monotonic() + 60
    try:
        while sum(len(v) for v in found.values()) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            record = decode(registry, msg.value())
            raw_id = record["envelope"]["lineage"]["raw_id"] if "envelope" in record else record.get("raw_id")
            if raw_id in raw_ids:
                found[msg.topic()].append(record)
    finally:
        consumer.close()
    return found


async def test_device_readings_reach_canonical_through_the_worker(
    settings: Settings, live_kafka: KafkaSettings, registry: Registry, new_topic
) -> None:
    run = uuid.uuid4().hex[:8].upper()
    linked, stranger = f"TEST{run}A", f"TEST{run}B"
    link(settings, linked, Link("00900301", HOSPITAL_OID, datetime(2026, 1, 1, tzinfo=UTC)))
    raw_topic = new_topic("test.device.raw")
    soon = datetime.now(UTC) + timedelta(hours=2)  # a device clock two hours ahead
    good = {
        "gateway": "GW-E2E",
        "measurements": [
            {"sensor": linked, "kind": "spo2", "v": 96, "t": "2026-11-24T07:15:00Z"},
            {"sensor": linked, "kind": "spo2", "v": 96, "t": "2026-11-24T07:15:00Z"},  # resent in the batch
            {"sensor": linked, "kind": "pulse", "v": 70, "t": soon.isoformat()},
        ],
    }
    unknown = {
        "gateway": "GW-E2E",
        "measurements": [{"sensor": stranger, "kind": "spo2", "v": 96, "t": "2026-11-24T07:15:00Z"}],
    }
    devices = DeviceSettings(
        port=0, metrics_port=None, tokens=[DeviceToken(sha256=token_hash(TOKEN), sender="GW-E2E")]
    )
    service = DeviceService(
        settings.model_copy(update={"devices": devices}), CollectorRegistry(), raw_topic=raw_topic
    )
    port = await service.start(with_telemetry=False)
    raw_ids = set()
    try:
        async with aiohttp.ClientSession() as session:
            for body in (good, unknown):
                async with session.post(
                    f"http://127.0.0.1:{port}/devices/gateway-batch",
                    data=json.dumps(body).encode(),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert resp.status == 202
                    raw_ids.add((await resp.json())["raw_id"])
    finally:
        await service.stop()

    start = ends(live_kafka, [OBSERVATIONS, DLQ_NORMALIZE])
    with normalize_worker(raw_topic):
        found = collect(live_kafka, registry, start, raw_ids, expected=3)

    observations = found[OBSERVATIONS]
    assert sorted(o["code"]["code"] for o in observations) == ["149530", "150456"]  # the duplicate collapsed
    assert {o["patient"]["key"] for o in observations} == {f"00900301@{HOSPITAL_OID}"}
    flagged = {
        o["code"]["code"]: [c["code"] for c in o["interpretation"] if c["system"] == FLAG_SYSTEM]
        for o in observations
    }
    assert flagged == {"150456": [], "149530": ["future-time"]}
    assert [(d["reason_code"], d["location"]) for d in found[DLQ_NORMALIZE]] == [
        ("unknown_device", "$.measurements[0]")
    ]
