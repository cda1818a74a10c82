"""Assemble and run the device doors from settings: topics, codecs, producer, HTTP, MQTT, telemetry.

Templates are loaded (and so validated) before any port opens: a broken template stops the start,
it never answers traffic.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from affluent.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.settings import Settings
from affluent.telemetry import Readiness, TelemetryServer, kafka_check, registry_check
from affluent.topics import CORE_TOPICS, DLQ_INGEST, INGEST_DEVICE_RAW, value_subject
from connectors.deadletter import DeadLetterWriter
from connectors.devices.http import DeviceHttpServer
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.mqtt import DeviceMqttDoor
from connectors.devices.templates import load_templates
from connectors.lifecycle import run_until_signalled, shut_down
from connectors.producer import DurableProducer
from connectors.raw import RawWriter
from schemas.registry import AvroCodec, Registry, load_schema


class DeviceService:
    def __init__(
        self,
        settings: Settings,
        metrics_registry: CollectorRegistry | None = None,
        raw_topic: str = INGEST_DEVICE_RAW,
        dlq_topic: str = DLQ_INGEST,
    ) -> None:
        self.settings = settings
        self.raw_topic = raw_topic
        self.dlq_topic = dlq_topic
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = DeviceMetrics(self.metrics_registry)
        self.templates = load_templates(settings.devices.templates_dir)
        self.producer: DurableProducer | None = None
        self.http: DeviceHttpServer | None = None
        self.mqtt: DeviceMqttDoor | None = None
        self.telemetry: TelemetryServer | None = None

    async def start(self, with_telemetry: bool = True) -> int:
        """Start the doors; returns the HTTP port (the real one when settings ask for port 0)."""
        s = self.settings
        await asyncio.to_thread(wait_for_kafka, s.kafka, 30)
        specs = [*CORE_TOPICS, TopicSpec(self.raw_topic), TopicSpec(self.dlq_topic)]
        await asyncio.to_thread(ensure_topics, s.kafka, specs)
        registry = Registry(s.registry)
        raw_codec = await asyncio.to_thread(
            AvroCodec, registry, value_subject(self.raw_topic), load_schema("raw_message"), "BACKWARD"
        )
        dlq_codec = await asyncio.to_thread(
            AvroCodec, registry, value_subject(self.dlq_topic), load_schema("dead_letter"), "BACKWARD"
        )
        self.producer = DurableProducer(s.kafka)
        writer = RawWriter(self.producer, raw_codec, self.raw_topic)
        self.http = DeviceHttpServer(s.devices, self.templates, writer, self.metrics)
        port = await self.http.start()
        if s.devices.mqtt.enabled:
            dead = DeadLetterWriter(self.producer, dlq_codec, self.dlq_topic)
            self.mqtt = DeviceMqttDoor(s.devices.mqtt, self.templates, writer, dead, self.metrics)
            await self.mqtt.start()
        if with_telemetry and s.devices.metrics_port is not None:
            checks = {"kafka": kafka_check(s.kafka), "registry": registry_check(s.registry)}
            if self.mqtt is not None:
                mqtt = self.mqtt
                checks["mqtt"] = lambda: _subscribed(mqtt)
            self.telemetry = TelemetryServer(self.metrics_registry, ready=Readiness(checks))
            await self.telemetry.start(s.devices.host, s.devices.metrics_port)
        return port

    async def stop(self) -> None:
        """Stop the MQTT subscription (no new PUBACK owed), then as every door: stop accepting, finish
        in-flight work, flush the producer."""
        if self.mqtt is not None:
            await self.mqtt.stop()
        await shut_down(self.http, self.telemetry, self.producer, None)


def _subscribed(mqtt: DeviceMqttDoor) -> None:
    """Readiness of the MQTT door: its subscriptions were acknowledged (SUBACK)."""
    if not mqtt.subscribed.is_set():
        raise ConnectionError("not subscribed")


async def serve_forever(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then shut down cleanly."""
    mqtt = settings.devices.mqtt
    subscribed = f"; MQTT door subscribed at {mqtt.host}:{mqtt.port}" if mqtt.enabled else ""
    await run_until_signalled(
        DeviceService(settings),
        lambda port: f"device door listening on {settings.devices.host}:{port}{subscribed}",
    )
