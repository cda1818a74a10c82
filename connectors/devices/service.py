"""Assemble and run the device doors from settings: topics, codecs, producer, HTTP, MQTT, telemetry.

Templates are loaded (and so validated) before any port opens: a broken template stops the start,
it never answers traffic.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec
from affluent.core.lifecycle import run_until_signalled, shut_down
from affluent.core.producer import DurableProducer
from affluent.core.settings import Settings
from affluent.core.telemetry import Readiness, TelemetryServer, kafka_check
from affluent.core.topics import CORE_TOPICS, DLQ_INGEST, INGEST_DEVICE_RAW
from connectors.devices.http import DeviceHttpServer
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.mqtt import DeviceMqttDoor
from connectors.raw import RawWriter
from connectors.runtime import open_kafka, start_telemetry, topic_codec
from formats.devices.templates import load_templates
from schemas.deadletter import DeadLetterWriter
from schemas.readiness import registry_check
from schemas.registry import Registry


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
        await open_kafka(s.kafka, [*CORE_TOPICS, TopicSpec(self.raw_topic), TopicSpec(self.dlq_topic)])
        registry = Registry(s.registry)
        raw_codec = await topic_codec(registry, self.raw_topic, "raw_message")
        dlq_codec = await topic_codec(registry, self.dlq_topic, "dead_letter")
        self.producer = DurableProducer(s.kafka)
        writer = RawWriter(self.producer, raw_codec, self.raw_topic)
        self.http = DeviceHttpServer(s.devices, self.templates, writer, self.metrics)
        port = await self.http.start()
        if s.devices.mqtt.enabled:
            dead = DeadLetterWriter(self.producer, dlq_codec, self.dlq_topic)
            self.mqtt = DeviceMqttDoor(s.devices.mqtt, self.templates, writer, dead, self.metrics)
            await self.mqtt.start()
        if with_telemetry:
            checks = {"kafka": kafka_check(s.kafka), "registry": registry_check(s.registry)}
            if self.mqtt is not None:
                mqtt = self.mqtt
                checks["mqtt"] = lambda: _subscribed(mqtt)
            self.telemetry = await start_telemetry(
                self.metrics_registry, Readiness(checks), s.devices.host, s.devices.metrics_port
            )
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
