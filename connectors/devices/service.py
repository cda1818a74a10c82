"""Assemble and run the device doors from settings: topics, codecs, producer, HTTP, MQTT, telemetry.

Templates are loaded (and so validated) before any port opens: a broken template stops the start,
it never answers traffic. So is the device registry (``control.devices``), read to its end: the doors
refuse a reading of a device bound to another sender, and must know every binding made before they open.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from affluent.core.compacted import CompactedView
from affluent.core.errors import ConfigError
from affluent.core.kafka import TopicSpec
from affluent.core.lifecycle import run_until_signalled, shut_down
from affluent.core.producer import DurableProducer
from affluent.core.settings import DeviceMqttSettings, DeviceSettings, Settings
from affluent.core.telemetry import Readiness, TelemetryServer, kafka_check
from affluent.core.tls import check_key_file, is_loopback, refuse_clear_http, refuse_unprotected
from affluent.core.topics import (
    COMPACTED_CONFIG,
    CONTROL_DEVICES,
    CORE_TOPICS,
    DLQ_INGEST,
    INGEST_DEVICE_RAW,
)
from connectors.devices.http import DeviceHttpServer
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.mqtt import DeviceMqttDoor
from connectors.raw import RawWriter
from connectors.runtime import open_kafka, start_telemetry, topic_codec
from formats.devices.registry import DeviceRegistry
from formats.devices.templates import load_templates
from schemas.deadletter import DeadLetterWriter
from schemas.readiness import registry_check
from schemas.registry import Registry


def check_exposure(settings: DeviceSettings) -> None:
    """Refuse what would carry readings or credentials in clear text beyond loopback: the HTTP door
    without TLS, and the MQTT door on a remote broker without TLS — or without credentials at all,
    which no setting allows, because the topic is the only sender the door sees and only an
    authenticated broker with per-gateway ACLs makes it mean anything."""
    refuse_clear_http(
        "the device HTTP door",
        "AFFLUENT_DEVICES",
        settings.host,
        settings.tls_certificate,
        settings.tls_key,
        settings.allow_plaintext,
    )
    if settings.mqtt.enabled:
        check_broker(settings.mqtt)


def check_broker(mqtt: DeviceMqttSettings) -> None:
    if mqtt.tls_key is not None:
        check_key_file(mqtt.tls_key, "AFFLUENT_DEVICES__MQTT__TLS_KEY")
    if is_loopback(mqtt.host):
        return
    if not (mqtt.username and mqtt.password):
        raise ConfigError(
            f"the MQTT door's broker {mqtt.host} is beyond loopback and the door has no credentials: set "
            "AFFLUENT_DEVICES__MQTT__USERNAME and AFFLUENT_DEVICES__MQTT__PASSWORD (and ACLs per gateway "
            "on the broker, docs/security.md)"
        )
    refuse_unprotected(
        "the MQTT door's connection to its broker",
        mqtt.host,
        [] if mqtt.tls_ca or mqtt.tls_certificate else ["TLS (AFFLUENT_DEVICES__MQTT__TLS_CA)"],
        allow_plaintext=mqtt.allow_plaintext,
        allow_setting="AFFLUENT_DEVICES__MQTT__ALLOW_PLAINTEXT",
    )


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
        self.bindings: CompactedView | None = None

    async def start(self, with_telemetry: bool = True) -> int:
        """Start the doors; returns the HTTP port (the real one when settings ask for port 0)."""
        s = self.settings
        check_exposure(s.devices)
        await open_kafka(
            s.kafka,
            [
                *CORE_TOPICS,
                TopicSpec(self.raw_topic),
                TopicSpec(self.dlq_topic),
                TopicSpec(CONTROL_DEVICES, config=COMPACTED_CONFIG),
            ],
        )
        registry = Registry(s.registry)
        raw_codec = await topic_codec(registry, self.raw_topic, "raw_message")
        dlq_codec = await topic_codec(registry, self.dlq_topic, "dead_letter")
        self.bindings = CompactedView(s.kafka, CONTROL_DEVICES, name="devices-registry")
        await asyncio.to_thread(self.bindings.start)
        devices = DeviceRegistry(self.bindings.get)
        self.producer = DurableProducer(s.kafka)
        writer = RawWriter(self.producer, raw_codec, self.raw_topic)
        dead = DeadLetterWriter(self.producer, dlq_codec, self.dlq_topic)
        self.http = DeviceHttpServer(s.devices, self.templates, writer, self.metrics, devices, dead)
        port = await self.http.start()
        if s.devices.mqtt.enabled:
            self.mqtt = DeviceMqttDoor(
                s.devices.mqtt,
                self.templates,
                writer,
                dead,
                self.metrics,
                devices,
                s.devices.require_gateway_binding,
            )
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
        await shut_down(self.http, self.telemetry, self.producer, self.bindings)


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
