"""The synthetic hospital's telemonitoring: home devices posting readings to the device door.

Each synthetic patient holds two devices, linked to them in the device registry (``control.devices``,
through :func:`affluent.devices_cli.link_all`, the same rule as ``affluent devices link``) before the
first reading: a blood-pressure monitor posting single readings over HTTP(S) JSON (template
``bp-single``) and a pulse oximeter behind a home gateway publishing batches over MQTT (template
``gateway-batch``). A small share of payloads is malformed: the HTTP door answers 400 (refused, never
stored); over MQTT the broker acknowledges and the door dead-letters it in ``dlq.ingest``.

Raw ids come from the door's own rule (:func:`connectors.devices.intake.payload_raw_id`): the sender is
the token's sender over HTTP and the MQTT topic over MQTT, the application the template name.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from affluent.sim.synthetic import HOSPITAL_OID, INS_TEST_OID, SyntheticPatient
from affluent.sim.types import Answer, HttpLane, Outbound

HTTP: Final = "devices_http"
MQTT: Final = "devices_mqtt"
BP_TEMPLATE: Final = "bp-single"
GATEWAY_TEMPLATE: Final = "gateway-batch"
MALFORMED: Final = ("wrong_type", "implausible_value", "missing_timestamp")


@dataclass(frozen=True, slots=True)
class DeviceTarget:
    """The device door's HTTP URL and MQTT broker, and the credentials of the hospital's devices."""

    http_url: str | None  # e.g. http://127.0.0.1:8082 (POST /devices/<template>); None: no HTTP channel
    token: str = ""
    sender: str = "SIM-HOME"  # the sender of the token in devices.tokens
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int | None = None  # None: no MQTT channel
    topic_prefix: str = "sim"  # the door subscribes to <prefix>/+/gateway-batch
    http_lanes: int = 2

    @property
    def topic_filter(self) -> str:
        return f"{self.topic_prefix}/+/{GATEWAY_TEMPLATE}"

    def channels(self) -> list[str]:
        return ([HTTP] if self.http_url else []) + ([MQTT] if self.mqtt_port else [])


def monitor_id(run: str, p: SyntheticPatient) -> str:
    return f"BPM-{run}-{p.ipp}"


def sensor_id(run: str, index: int) -> str:
    """An EUI-64-shaped id (16 hex digits), unique to this run's patient ``index``."""
    return f"{run[:6].upper()}{index:010X}"


def gateway_topic(prefix: str, run: str, index: int) -> str:
    return f"{prefix}/GW-{run}-{index % 8}/{GATEWAY_TEMPLATE}"


def device_links(run: str, people: list[SyntheticPatient], since: datetime) -> dict[str, Any]:
    """device id -> the registry Link to its patient (IPP under the hospital OID, INS under the test
    OID), open from ``since``: both devices of every patient."""
    from formats.devices.registry import Link

    links: dict[str, Any] = {}
    for index, p in enumerate(people):
        link = Link(p.ipp, HOSPITAL_OID, since, ins=p.nir, ins_oid=INS_TEST_OID, ins_qualified=p.qualified)
        links[monitor_id(run, p)] = link
        links[sensor_id(run, index)] = link
    return links


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def bp_payload(
    rng: random.Random, run: str, p: SyntheticPatient, when: datetime, malformed: str | None
) -> bytes:
    reading: dict[str, Any] = {
        "deviceId": monitor_id(run, p),
        "model": "TENSIO-SIM",
        "measuredAt": _iso(when),
        "systolic": rng.randint(105, 165),
        "diastolic": rng.randint(60, 100),
        "pulse": rng.randint(55, 110),
    }
    if malformed == "wrong_type":
        reading["systolic"] = "cent vingt"
    elif malformed == "implausible_value":
        reading["diastolic"] = 900
    elif malformed == "missing_timestamp":
        del reading["measuredAt"]
    return json.dumps(reading).encode()


def gateway_payload(rng: random.Random, run: str, index: int, when: datetime, malformed: str | None) -> bytes:
    sensor = sensor_id(run, index)
    spo2: dict[str, Any] = {"sensor": sensor, "kind": "spo2", "v": rng.randint(90, 99), "t": _iso(when)}
    pulse: dict[str, Any] = {"sensor": sensor, "kind": "pulse", "v": rng.randint(55, 110), "t": _iso(when)}
    if malformed == "wrong_type":
        spo2["v"] = "quatre-vingt-dix-sept"
    elif malformed == "implausible_value":
        spo2["v"] = 3
    elif malformed == "missing_timestamp":
        del pulse["t"]
    return json.dumps({"gateway": f"GW-{run}-{index % 8}", "measurements": [spo2, pulse]}).encode()


def device_outbound(
    channel: str,
    rng: random.Random,
    run: str,
    index: int,
    p: SyntheticPatient,
    when: datetime,
    target: DeviceTarget,
    templates: Mapping[str, Any],
    malformed: str | None,
) -> Outbound:
    """One device message about patient ``index`` with the raw id the door gives it (None: refused)."""
    from connectors.devices.intake import payload_raw_id
    from formats.devices.templates import PayloadError, read_payload

    label = f"malformed:{malformed}" if malformed else ("bp reading" if channel == HTTP else "gateway batch")
    if channel == HTTP:
        payload = bp_payload(rng, run, p, when, malformed)
        try:
            read_payload(templates[BP_TEMPLATE], payload)
        except PayloadError:
            return Outbound(HTTP, index % target.http_lanes, payload, None, label, BP_TEMPLATE)
        return Outbound(
            HTTP,
            index % target.http_lanes,
            payload,
            payload_raw_id(target.sender, BP_TEMPLATE, payload),
            label,
            BP_TEMPLATE,
        )
    payload = gateway_payload(rng, run, index, when, malformed)
    topic = gateway_topic(target.topic_prefix, run, index)
    # Over MQTT every message is stored: as a raw record, or as a dead letter under the same raw id.
    return Outbound(MQTT, 0, payload, payload_raw_id(topic, GATEWAY_TEMPLATE, payload), label, topic)


class DeviceHttpChannel:
    """A monitor's HTTP client; acknowledged = 202, given after Kafka holds the raw record."""

    def __init__(self, target: DeviceTarget) -> None:
        self.base_url = str(target.http_url).rstrip("/")
        self.http = HttpLane(target.token, "application/json")

    @classmethod
    async def open(cls, target: DeviceTarget) -> DeviceHttpChannel:
        return cls(target)

    async def send(self, message: Outbound) -> Answer:
        status, body = await self.http.post(f"{self.base_url}/devices/{message.target}", message.payload)
        if status == 202:
            return Answer("HTTP 202", True)
        try:
            error = str(json.loads(body).get("error", ""))
        except (ValueError, AttributeError):
            error = ""
        return Answer(f"HTTP {status} {error}".rstrip(), False)

    async def close(self) -> None:
        await self.http.close()


class DeviceMqttChannel:
    """A gateway publishing at QoS 1; acknowledged = the broker's PUBACK (the door then takes the
    message from the broker and PUBACKs it only after Kafka holds it, or its dead letter)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    async def open(cls, target: DeviceTarget) -> DeviceMqttChannel:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"affluent-sim-{uuid.uuid4().hex[:8]}")
        await asyncio.to_thread(client.connect, target.mqtt_host, int(target.mqtt_port or 1883), 30)
        client.loop_start()
        return cls(client)

    async def send(self, message: Outbound) -> Answer:
        info = self.client.publish(message.target, message.payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, 30)
        return Answer("PUBACK", True) if info.is_published() else Answer("no PUBACK", False)

    async def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def since(start: datetime) -> datetime:
    """Links open a day before the run's first reading: readings are never ahead of their link."""
    return start - timedelta(days=1)
