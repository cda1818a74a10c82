"""The MQTT door: subscribe with QoS 1 and send each PUBACK only after Kafka holds the reading.

paho-mqtt 2.x with ``manual_ack=True`` lets the PUBACK wait; with a fixed client id and a persistent
session (``clean_session=False``) the broker keeps every unacknowledged reading and redelivers it after
a reconnect — ours or the broker's restart. paho's network thread only hands messages to the asyncio
loop; one drain task stores them in batches (one Kafka round-trip for many readings) and then
acknowledges them in arrival order, as MQTT 3.1.1 asks. Kafka down → nothing is acknowledged; the
batch is retried with back-off, and the broker's in-flight window holds the rest back.

A payload the template cannot read cannot get a 400 here: it becomes a dead letter (``dlq.ingest``)
with the precise reason, and is acknowledged only once the dead letter is stored.

MQTT has no sender of its own: the door trusts the topic. The broker must therefore authenticate every
gateway and let it publish only under its own topic level (Mosquitto: ``pattern write
<prefix>/%u/<template>``, docs/security.md); the door reads the gateway from the level its topic filter
leaves to ``+`` (:func:`gateway_of`) and refuses, as a ``device_not_bound`` dead letter, a reading of a
device the registry binds to another gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from affluent.core.errors import KafkaUnavailable
from affluent.core.settings import DeviceMqttSettings
from connectors.devices.intake import CONTENT_TYPE, PROTOCOL, judge, payload_raw_id, raw_message
from connectors.devices.metrics import DeviceMetrics
from connectors.raw import RawMessage, RawWriter
from formats.devices.registry import DeviceRegistry
from formats.devices.templates import PayloadError, Template
from formats.reasons import ReasonCode
from schemas.deadletter import DeadLetterWriter

log = logging.getLogger(__name__)

CONNECTOR = "devices_mqtt"
_BATCH = 500


@dataclass(frozen=True, slots=True)
class Received:
    mid: int
    qos: int
    topic: str
    payload: bytes
    at: float


def mapping_for(topics: Mapping[str, str], topic: str) -> str | None:
    """The template of the first configured topic filter that matches (MQTT wildcards + and #)."""
    for pattern, mapping in topics.items():
        if mqtt.topic_matches_sub(pattern, topic):
            return mapping
    return None


def gateway_of(topics: Mapping[str, str], topic: str) -> str | None:
    """The gateway a topic names: the level that its (first matching) filter leaves to the first ``+``,
    e.g. ``GW-17`` in ``telemonitoring/GW-17/bp`` under ``telemonitoring/+/bp``. The broker's ACL makes
    that level the publishing account's user name; a filter without ``+`` names no gateway."""
    for pattern in topics:
        if mqtt.topic_matches_sub(pattern, topic):
            levels = pattern.split("/")
            return topic.split("/")[levels.index("+")] if "+" in levels else None
    return None


class DeviceMqttDoor:
    def __init__(
        self,
        settings: DeviceMqttSettings,
        templates: Mapping[str, Template],
        writer: RawWriter,
        dead_letters: DeadLetterWriter,
        metrics: DeviceMetrics,
        registry: DeviceRegistry | None = None,
        require_binding: bool = False,
    ) -> None:
        self.settings = settings
        self.templates = templates
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.registry = registry  # None: no binding check (device ↔ gateway)
        self.require_binding = require_binding
        self.connected = False
        # Set once the broker granted our subscriptions (SUBACK); cleared on disconnect.
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[Received] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: mqtt.Client | None = None

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if s.username:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls_ca or s.tls_certificate:
            client.tls_set(
                ca_certs=str(s.tls_ca) if s.tls_ca else None,
                certfile=str(s.tls_certificate) if s.tls_certificate else None,
                keyfile=str(s.tls_key) if s.tls_key else None,
            )
        client.reconnect_delay_set(
            min_delay=max(1, int(s.reconnect_min_s)), max_delay=max(1, int(s.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._drain(), name="affluent-mqtt-drain")
        self._client = self._make_client()
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()

    async def stop(self) -> None:
        """Disconnect first: what is not acknowledged yet stays with the broker for the next session."""
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.disconnect)
            await asyncio.to_thread(client.loop_stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- paho's network thread -------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connection refused: %s", reason)
            return
        self.connected = True
        client.subscribe([(pattern, 1) for pattern in self.settings.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._call(self.subscribed.set)
        else:
            log.warning(
                "MQTT subscription refused for %d topic filter(s)", sum(r.is_failure for r in reasons)
            )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        self._call(self.subscribed.clear)
        log.info("MQTT disconnected (%s); paho reconnects with back-off", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = Received(msg.mid, msg.qos, msg.topic, bytes(msg.payload), time.perf_counter())
        self._call(self._queue.put_nowait, item)

    def _call(self, function: Any, *args: Any) -> None:
        """Run on the asyncio loop; a closing loop is fine: the broker keeps what we did not acknowledge."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(function, *args)

    # --- the asyncio side ------------------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._store(batch)
            client = self._client
            for item in batch:
                if client is not None and item.qos > 0:
                    client.ack(item.mid, item.qos)
                self.metrics.latency.labels("mqtt").observe(time.perf_counter() - item.at)

    async def _store(self, batch: list[Received]) -> None:
        """Returns only once every message of the batch is in Kafka (raw record or dead letter)."""
        raws: list[RawMessage] = []
        rejected: list[tuple[Received, str, PayloadError]] = []
        counts: list[tuple[str, int]] = []
        for item in batch:
            name = mapping_for(self.settings.topics, item.topic) or ""
            try:
                gateway = gateway_of(self.settings.topics, item.topic)
                template, readings = judge(
                    self.templates, name, item.payload, self.registry, gateway, self.require_binding
                )
            except PayloadError as exc:
                rejected.append((item, name, exc))
                continue
            except Exception as exc:  # a bug must not stop the door: the message becomes a dead letter
                bug = PayloadError(
                    ReasonCode.MAPPING_FAILED, f"unexpected {type(exc).__name__} reading the payload"
                )
                rejected.append((item, name, bug))
                continue
            raws.append(raw_message(CONNECTOR, item.topic, template, item.payload, len(readings)))
            counts.append((template.name, len(readings)))
        delay = 0.5
        while True:
            try:
                if raws:
                    await self.writer.write_all(raws)
                for item, name, problem in rejected:
                    if not await self._dead_letter(item, name, problem):
                        raise KafkaUnavailable("dead letter not stored")
                break
            except KafkaUnavailable:
                self.metrics.payloads.labels("mqtt", "kafka_unavailable").inc(len(batch))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        for name, n in counts:
            self.metrics.readings.labels("mqtt", name).inc(n)
        self.metrics.payloads.labels("mqtt", "accepted").inc(len(raws))
        if rejected:
            self.metrics.payloads.labels("mqtt", "dead_letter").inc(len(rejected))

    async def _dead_letter(self, item: Received, name: str, exc: PayloadError) -> bool:
        rule = f"template {name}" if name else "topic mapping"
        if exc.code == ReasonCode.DEVICE_NOT_BOUND:
            rule = "device registry"
        return await self.dead_letters.write(
            stage="ingest",
            reason_code=exc.code,
            reason=exc.reason,
            location=exc.location,
            rule=rule,
            payload=item.payload,
            content_type=CONTENT_TYPE,
            source_facility=item.topic,
            source_application=name,
            raw_id=payload_raw_id(item.topic, name, item.payload),
            connector=CONNECTOR,
            protocol=PROTOCOL,
        )
