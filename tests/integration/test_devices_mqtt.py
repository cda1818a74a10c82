"""The MQTT door with a real Mosquitto and the real Kafka: QoS 1 readings of the three shapes reach
canonical Observations; an unreadable payload becomes a dead letter with its reason; a broker restart
in the middle of traffic loses nothing (PUBACK only after Kafka, persistent sessions on both sides)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from affluent.core.producer import DurableProducer
from affluent.core.settings import DeviceMqttSettings, DeviceSettings, KafkaSettings, Settings
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.mqtt import DeviceMqttDoor
from connectors.devices.service import DeviceService
from connectors.raw import RawWriter
from formats.devices.templates import load_templates
from schemas.deadletter import DeadLetterWriter
from schemas.registry import AvroCodec, Registry, decode, load_schema
from tests.support.devices import normalize_raw, sample
from tests.support.mosquitto import BrokerTls, Mosquitto, free_port

pytestmark = [pytest.mark.integration]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mosquitto")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


def door_settings(broker: Mosquitto, topics: dict[str, str]) -> DeviceMqttSettings:
    """A fresh client id per test: its persistent session is its own."""
    return DeviceMqttSettings(
        enabled=True,
        port=broker.port,
        client_id=f"affluent-test-{uuid.uuid4().hex[:8]}",
        topics=topics,
        reconnect_min_s=1,
        reconnect_max_s=2,
    )


async def start_door(
    settings: Settings, mqtt_settings: DeviceMqttSettings, raw_topic: str, dlq_topic: str
) -> DeviceService:
    """The device service with its MQTT door, once the broker granted the subscriptions."""
    devices = DeviceSettings(port=0, metrics_port=None, mqtt=mqtt_settings)
    service = DeviceService(
        settings.model_copy(update={"devices": devices}),
        CollectorRegistry(),
        raw_topic=raw_topic,
        dlq_topic=dlq_topic,
    )
    await service.start(with_telemetry=False)
    assert service.mqtt is not None
    await asyncio.wait_for(service.mqtt.subscribed.wait(), 10)
    return service


@pytest.fixture
async def door(
    settings: Settings, registry: Registry, broker: Mosquitto, new_topic: Callable[..., str]
) -> AsyncIterator[tuple[str, str, str]]:
    prefix = f"tele/{uuid.uuid4().hex[:8]}"
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    mqtt_settings = door_settings(
        broker,
        {f"{prefix}/bp": "bp-single", f"{prefix}/scale": "scale-nested", f"{prefix}/gw/+": "gateway-batch"},
    )
    service = await start_door(settings, mqtt_settings, raw_topic, dlq_topic)
    yield prefix, raw_topic, dlq_topic
    await service.stop()


def eventually(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


class Publisher:
    """A device gateway: QoS 1, persistent session, re-sends what the broker did not acknowledge."""

    def __init__(self, port: int, tls: BrokerTls | None = None) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"gw-{uuid.uuid4().hex[:8]}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(1, 2)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.certificate), keyfile=str(tls.key))
            self.client.username_pw_set(tls.username, tls.password)
        self.client.connect(host="127.0.0.1", port=port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def wait_all(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(i.is_published() for i in self.infos) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(i.is_published() for i in self.infos), "the broker did not acknowledge every publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_three_shapes_over_mqtt_reach_canonical_observations(door, broker, reader, registry) -> None:
    prefix, raw_topic, _ = door
    gateway = Publisher(broker.port)
    try:
        gateway.publish(f"{prefix}/bp", sample("bp-single"))
        gateway.publish(f"{prefix}/scale", sample("scale-nested"))
        gateway.publish(f"{prefix}/gw/GW-0042", sample("gateway-batch"))
        await asyncio.to_thread(gateway.wait_all)
    finally:
        gateway.close()
    records = await asyncio.to_thread(reader, raw_topic, 3)
    raws = [decode(registry, v) for _, v in records]
    assert sorted(r["attributes"]["mapping"] for r in raws) == ["bp-single", "gateway-batch", "scale-nested"]
    assert {r["connector"] for r in raws} == {"devices_mqtt"}
    observations, dead = normalize_raw(registry, [v for _, v in records if v is not None])
    assert dead == []
    assert sorted(o["code"]["code"] for o in observations) == sorted(
        ["8480-6", "8462-4", "8867-4", "29463-7", "8310-5", "150456", "149530", "147842"]
    )
    weight = next(o for o in observations if o["code"]["code"] == "29463-7")
    assert weight["value_quantity"]["unit"] == "kg" and weight["value_quantity"]["original_unit"] == "lb"
    assert weight["effective_time"] == datetime(2026, 11, 24, 6, 30, tzinfo=UTC)


async def test_unreadable_payload_is_a_dead_letter_and_is_acknowledged(
    door, broker, reader, registry
) -> None:
    prefix, raw_topic, dlq_topic = door
    bad = json.loads(sample("bp-single"))
    bad["systolic"] = "cent-vingt"
    gateway = Publisher(broker.port)
    try:
        gateway.publish(f"{prefix}/bp", json.dumps(bad).encode())
        await asyncio.to_thread(gateway.wait_all)
    finally:
        gateway.close()
    (record,) = await asyncio.to_thread(reader, dlq_topic, 1)
    letter = decode(registry, record[1])
    assert (letter["reason_code"], letter["location"], letter["stage"]) == (
        "wrong_type",
        "$:systolic",
        "ingest",
    )
    assert (
        letter["source"]["connector"] == "devices_mqtt" and letter["raw_payload"] == json.dumps(bad).encode()
    )
    assert await asyncio.to_thread(reader, raw_topic, 1, 1.0) == []


async def test_broker_restart_during_traffic_loses_nothing(door, broker, reader, registry) -> None:
    prefix, raw_topic, _ = door
    count = 120
    start = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    base = json.loads(sample("bp-single"))

    def payload(i: int) -> bytes:
        return json.dumps(dict(base, measuredAt=(start + timedelta(minutes=i)).isoformat())).encode()

    gateway = Publisher(broker.port)
    try:
        for i in range(count // 2):
            gateway.publish(f"{prefix}/bp", payload(i))
        await asyncio.to_thread(broker.restart)
        for i in range(count // 2, count):
            gateway.publish(f"{prefix}/bp", payload(i))
        await asyncio.to_thread(gateway.wait_all, 40)
    finally:
        gateway.close()
    records = await asyncio.to_thread(reader, raw_topic, count, 40)
    raws = {decode(registry, v)["raw_id"]: v for _, v in records if v is not None}
    assert len(raws) == count  # every reading, duplicates (redeliveries) collapse on raw_id
    observations, dead = normalize_raw(registry, list(raws.values()))
    assert dead == [] and len({o["envelope"]["event_id"] for o in observations}) == count * 3


async def test_no_puback_while_kafka_is_down_so_the_broker_redelivers(
    settings: Settings, registry: Registry, broker: Mosquitto, reader, new_topic: Callable[..., str]
) -> None:
    """A door whose Kafka is unreachable never acknowledges; the next session of the same client gets
    the reading again from the broker and stores it."""
    prefix = f"tele/{uuid.uuid4().hex[:8]}"
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    mqtt_settings = door_settings(broker, {f"{prefix}/bp": "bp-single"})
    dead_kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    producer = DurableProducer(dead_kafka)
    raw_codec = AvroCodec(registry, f"{raw_topic}-value", load_schema("raw_message"), "BACKWARD")
    dlq_codec = AvroCodec(registry, f"{dlq_topic}-value", load_schema("dead_letter"), "BACKWARD")
    counters = CollectorRegistry()
    metrics = DeviceMetrics(counters)

    def payloads(outcome: str) -> float:
        value = counters.get_sample_value(
            "affluent_device_payloads_total", {"door": "mqtt", "outcome": outcome}
        )
        return value or 0.0

    blocked = DeviceMqttDoor(
        mqtt_settings,
        load_templates(),
        RawWriter(producer, raw_codec, raw_topic),
        DeadLetterWriter(producer, dlq_codec, dlq_topic),
        metrics,
    )
    await blocked.start()
    gateway = Publisher(broker.port)
    try:
        await asyncio.wait_for(blocked.subscribed.wait(), 10)
        gateway.publish(f"{prefix}/bp", sample("bp-single"))
        await asyncio.to_thread(gateway.wait_all)
        await asyncio.to_thread(eventually, lambda: payloads("kafka_unavailable") > 0, 10)
        assert payloads("accepted") == 0
    finally:
        gateway.close()
        await blocked.stop()
        producer.close(timeout_s=0.5)
    assert payloads("kafka_unavailable") >= 1
    service = await start_door(settings, mqtt_settings, raw_topic, dlq_topic)
    try:
        (record,) = await asyncio.to_thread(reader, raw_topic, 1, 20)
    finally:
        await service.stop()
    assert decode(registry, record[1])["payload"] == sample("bp-single")


async def test_tls_with_client_certificate_and_password(
    settings: Settings, registry: Registry, reader, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    from tests.support.certs import TestPki

    pki = TestPki(tmp_path / "pki")
    server = pki.issue("mqtt.test", server=True)
    broker = Mosquitto(
        tmp_path / "tls-broker",
        BrokerTls(
            pki.ca.cert, server.cert, server.key, username="affluent", password="test-password-not-secret"
        ),
    )
    broker.start()
    door_cert, gateway_cert = pki.issue("affluent-door.test"), pki.issue("gw-0042.test")
    prefix = f"tele/{uuid.uuid4().hex[:8]}"
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    mqtt_settings = door_settings(broker, {f"{prefix}/bp": "bp-single"}).model_copy(
        update={
            "tls_ca": pki.ca.cert,
            "tls_certificate": door_cert.cert,
            "tls_key": door_cert.key,
            "username": "affluent",
            "password": SecretStr("test-password-not-secret"),
        }
    )
    try:
        service = await start_door(settings, mqtt_settings, raw_topic, dlq_topic)
        gateway = Publisher(
            broker.port,
            BrokerTls(
                pki.ca.cert, gateway_cert.cert, gateway_cert.key, "affluent", "test-password-not-secret"
            ),
        )
        try:
            gateway.publish(f"{prefix}/bp", sample("bp-single"))
            await asyncio.to_thread(gateway.wait_all)
            (record,) = await asyncio.to_thread(reader, raw_topic, 1)
        finally:
            gateway.close()
            await service.stop()
    finally:
        broker.stop()
    assert decode(registry, record[1])["connector"] == "devices_mqtt"
