"""A hostile network, inbound (issue #18), against the real broker, registry, Mosquitto and TLS handshakes.

- the MQTT door behind a Mosquitto with a password file and per-gateway ACLs: no anonymous client, a
  gateway cannot publish on another gateway's topic, and a reading of a device bound to another gateway
  becomes a ``device_not_bound`` dead letter; a door without credentials is not let in either;
- the device HTTP door refuses (403 + dead letter) a reading of another gateway's device;
- a client certificate with two common names is no identity at the MLLP door (the last CN used to be
  taken) nor at the FHIR door (the first was);
- the opposition endpoint speaks HTTPS, and refuses to listen beyond loopback in clear text — also as
  the ``affluent opposition serve`` process, in one line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from affluent.core.auth import StaticTokens, new_token
from affluent.core.errors import ConfigError
from affluent.core.producer import DurableProducer
from affluent.core.settings import (
    DeviceMqttSettings,
    DeviceSettings,
    DeviceToken,
    FhirRestSettings,
    KafkaSettings,
    MllpSettings,
    OppositionSettings,
    Settings,
)
from affluent.devices_cli import link
from affluent.sim.synthetic import HOSPITAL_OID
from connectors.devices.intake import token_hash
from connectors.devices.service import DeviceService
from connectors.fhir_rest.auth import token_digest
from connectors.fhir_rest.service import FhirRestService
from connectors.mllp.service import MllpService
from formats.devices.registry import Link
from formats.hl7 import er7
from schemas.registry import Registry, decode
from streams.opposition.http import OppositionEndpoint
from streams.opposition.service import OppositionMetrics, OppositionService
from streams.pseudonymize.worker import build_feeds
from tests.support import canonical_samples as cs
from tests.support.certs import Issued, TestPki
from tests.support.fhir_door import TOKEN, read_topic
from tests.support.mllp_client import MllpClient, control_id_of_ack
from tests.support.mosquitto import Mosquitto, write_password_file
from tests.support.pipeline import KEY_FILE, free_port

pytestmark = [pytest.mark.integration]

LINKED_FROM = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def issue_with_cns(pki: TestPki, cns: list[str]) -> Issued:
    """A client certificate from the test CA whose subject holds several common names."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(pki._ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(pki._key, hashes.SHA256())
    )
    stem = pki.folder / f"multi-{uuid.uuid4().hex[:6]}"
    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return Issued(cert_path, key_path)


def client_context(pki: TestPki, issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(str(issued.cert), str(issued.key))
    return context


# --- the MQTT door behind an authenticating broker with per-gateway ACLs ------------------------------


def gateway_batch(sensor: str) -> bytes:
    reading = {"sensor": sensor, "kind": "spo2", "v": 97, "t": "2026-11-24T07:15:00Z"}
    return json.dumps({"gateway": "ignored", "measurements": [reading]}).encode()


class Gateway:
    """A gateway's MQTT client: QoS 1, a user name and password; ``refused`` when CONNACK said no."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.connected = threading.Event()
        self.answered = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"gw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self.connected.set()
        self.answered.set()

    @property
    def refused(self) -> bool:
        assert self.answered.wait(10), "no CONNACK"
        return not self.connected.is_set()

    def publish(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.client.publish(topic, payload, qos=1))

    def wait_all(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(i.is_published() for i in self.infos) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(i.is_published() for i in self.infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


PASSWORDS = {
    "affluent-devices": "door-pw-not-a-secret",
    "GW-A": "a-pw-not-a-secret",
    "GW-B": "b-pw-not-a-secret",
}


@pytest.fixture
def acl_broker(tmp_path: Path):
    """Mosquitto as docs/security.md configures it: password file, no anonymous client, the door reads
    every gateway's topic, each gateway writes under its own user name only."""
    prefix = f"tele-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "broker"
    passwords = write_password_file(folder / "passwords", PASSWORDS)
    acl = folder / "acl"
    acl.write_text(
        f"user affluent-devices\ntopic read {prefix}/+/gateway-batch\n\n"
        f"pattern write {prefix}/%u/gateway-batch\n",
        encoding="utf-8",
    )
    broker = Mosquitto(folder, password_file=passwords, acl_file=acl)
    broker.start()
    yield broker, prefix
    broker.stop()


async def start_device_door(
    settings: Settings, devices: DeviceSettings, raw_topic: str, dlq_topic: str, subscribed: bool = True
) -> DeviceService:
    service = DeviceService(
        settings.model_copy(update={"devices": devices}),
        CollectorRegistry(),
        raw_topic=raw_topic,
        dlq_topic=dlq_topic,
    )
    await service.start(with_telemetry=False)
    if subscribed:
        assert service.mqtt is not None
        await asyncio.wait_for(service.mqtt.subscribed.wait(), 10)
    return service


def mqtt_door(broker: Mosquitto, prefix: str, **credentials: Any) -> DeviceSettings:
    return DeviceSettings(
        port=0,
        metrics_port=None,
        mqtt=DeviceMqttSettings(
            enabled=True,
            port=broker.port,
            client_id=f"affluent-test-{uuid.uuid4().hex[:8]}",
            topics={f"{prefix}/+/gateway-batch": "gateway-batch"},
            reconnect_min_s=1,
            reconnect_max_s=2,
            **credentials,
        ),
    )


async def test_a_gateway_cannot_publish_for_another_gateway(
    settings: Settings,
    registry: Registry,
    reader: Callable[..., Any],
    new_topic: Callable[..., str],
    acl_broker,
) -> None:
    broker, prefix = acl_broker
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    free_sensor, b_sensor = (f"{uuid.uuid4().hex[:16].upper()}" for _ in range(2))
    await asyncio.to_thread(
        link, settings, b_sensor, Link("90011", HOSPITAL_OID, LINKED_FROM, gateway="GW-B")
    )

    anonymous = Gateway(broker.port, None, None)
    impostor = Gateway(broker.port, "GW-A", "wrong-password")
    assert anonymous.refused and impostor.refused
    anonymous.close()
    impostor.close()

    credentials = {"username": "affluent-devices", "password": SecretStr(PASSWORDS["affluent-devices"])}
    service = await start_device_door(
        settings, mqtt_door(broker, prefix, **credentials), raw_topic, dlq_topic
    )
    a, b = Gateway(broker.port, "GW-A", PASSWORDS["GW-A"]), Gateway(broker.port, "GW-B", PASSWORDS["GW-B"])
    try:
        assert not a.refused and not b.refused
        a.publish(f"{prefix}/GW-B/gateway-batch", gateway_batch(free_sensor))  # the broker drops it (ACL)
        a.publish(f"{prefix}/GW-A/gateway-batch", gateway_batch(b_sensor))  # GW-B's device: dead letter
        a.publish(f"{prefix}/GW-A/gateway-batch", gateway_batch(free_sensor))  # stored
        await asyncio.to_thread(a.wait_all)
        b.publish(f"{prefix}/GW-B/gateway-batch", gateway_batch(b_sensor))  # its own device: stored
        await asyncio.to_thread(b.wait_all)
        raws = [decode(registry, v) for _, v in await asyncio.to_thread(reader, raw_topic, 2)]
        dead = [decode(registry, v) for _, v in await asyncio.to_thread(reader, dlq_topic, 1)]
    finally:
        a.close()
        b.close()
        await service.stop()
    assert sorted((r["source_facility"], r["payload"]) for r in raws) == sorted(
        [
            (f"{prefix}/GW-A/gateway-batch", gateway_batch(free_sensor)),
            (f"{prefix}/GW-B/gateway-batch", gateway_batch(b_sensor)),
        ]
    )
    (letter,) = dead
    assert (letter["reason_code"], letter["rule"], letter["source"]["facility"]) == (
        "device_not_bound",
        "device registry",
        f"{prefix}/GW-A/gateway-batch",
    )


async def test_the_door_needs_credentials_of_its_own(
    settings: Settings, new_topic: Callable[..., str], acl_broker
) -> None:
    broker, prefix = acl_broker
    service = await start_device_door(
        settings,
        mqtt_door(broker, prefix),
        new_topic("test.device.raw"),
        new_topic("test.dlq"),
        subscribed=False,
    )
    try:
        assert service.mqtt is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(service.mqtt.subscribed.wait(), 3)
    finally:
        await service.stop()


async def test_the_door_refuses_a_remote_broker_without_credentials(settings: Settings) -> None:
    """Beyond loopback the door does not even try: the refusal comes before Kafka or the broker."""
    devices = DeviceSettings(
        port=0,
        mqtt=DeviceMqttSettings(
            enabled=True, host="192.0.2.10", topics={"t/+/gateway-batch": "gateway-batch"}
        ),
    )
    with pytest.raises(ConfigError, match="AFFLUENT_DEVICES__MQTT__USERNAME"):
        await DeviceService(settings.model_copy(update={"devices": devices})).start(with_telemetry=False)


# --- the device HTTP door ------------------------------------------------------------------------------

TOKEN_A, TOKEN_B = "http-gw-a-token-not-a-secret", "http-gw-b-token-not-a-secret"


async def test_http_reading_of_another_gateways_device_is_refused_and_dead_lettered(
    settings: Settings,
    registry: Registry,
    reader: Callable[..., Any],
    new_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    pki = TestPki(tmp_path / "pki")
    server = pki.issue("127.0.0.1", server=True)
    device = f"BPM-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(link, settings, device, Link("90012", HOSPITAL_OID, LINKED_FROM, gateway="GW-A"))
    body = json.dumps(
        {
            "deviceId": device,
            "measuredAt": "2026-11-24T08:15:00+01:00",
            "systolic": 128,
            "diastolic": 82,
            "pulse": 71,
        }
    ).encode()
    devices = DeviceSettings(
        port=0,
        metrics_port=None,
        tokens=[
            DeviceToken(sha256=token_hash(TOKEN_A), sender="GW-A"),
            DeviceToken(sha256=token_hash(TOKEN_B), sender="GW-B"),
        ],
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
    )
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    service = await start_device_door(settings, devices, raw_topic, dlq_topic, subscribed=False)
    url = f"https://127.0.0.1:{service.http.port}/devices/bp-single"  # type: ignore[union-attr]
    answers = []
    try:
        async with aiohttp.ClientSession() as session:
            for token, cn in ((TOKEN_B, "gw-b.test"), (TOKEN_A, "gw-a.test")):
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                context = client_context(pki, pki.issue(cn))
                async with session.post(url, data=body, headers=headers, ssl=context) as response:
                    answers.append((response.status, await response.json()))
        raws = [decode(registry, v) for _, v in await asyncio.to_thread(reader, raw_topic, 1)]
        dead = [decode(registry, v) for _, v in await asyncio.to_thread(reader, dlq_topic, 1)]
    finally:
        await service.stop()
    (refused, refusal), (accepted, _) = answers
    assert (refused, refusal["error"], refusal["location"]) == (403, "device_not_bound", "$")
    assert device not in json.dumps(refusal)
    assert accepted == 202
    (raw,) = raws
    assert raw["source_facility"] == "GW-A" and raw["attributes"]["tls_subject"] == "gw-a.test"
    (letter,) = dead
    assert (letter["reason_code"], letter["source"]["facility"], letter["raw_payload"]) == (
        "device_not_bound",
        "GW-B",
        body,
    )


# --- one reading of a certificate's CN: two CNs name nobody -------------------------------------------

ADT = "MSH|^~\\&|PAS|{fac}|AFF|HUB|20261124||ADT^A01|{cid}|P|2.5\rPID|||7^^^{fac}^PI||ROUX^Maël\r"


async def test_mllp_refuses_a_certificate_with_two_cns(
    settings: Settings, live_kafka, registry, tmp_path: Path
) -> None:
    """The MLLP door took the last CN: an allowed CN appended after another one passed the allow-list."""
    pki = TestPki(tmp_path / "pki")
    server = pki.issue("affluent-mllp.test", server=True)
    mllp = MllpSettings(
        port=0,
        metrics_port=None,
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
        tls_require_client_certificate=True,
        tls_allowed_subjects={"CHU-LYON": ["pas.chu-lyon.test"]},
    )
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        settings.model_copy(update={"mllp": mllp}),
        CollectorRegistry(),
        raw_topic=f"it.hardening.raw.{suffix}",
        dlq_topic=f"it.hardening.dlq.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    codes = []
    try:
        for cns in (["pas.chu-lyon.test"], ["intruder.test", "pas.chu-lyon.test"]):
            client = await MllpClient.connect(
                "127.0.0.1", port, client_context(pki, issue_with_cns(pki, cns))
            )
            cid = uuid.uuid4().hex[:12]
            (reply,) = await client.request(ADT.format(fac="CHU-LYON", cid=cid).encode())
            codes.append(control_id_of_ack(reply)[0])
            if codes[-1] != "AA":
                assert "certificate" in (er7.parse(reply).get("ERR-8") or "")
            await client.close()
    finally:
        await service.stop()
    assert codes == ["AA", "AE"]


async def test_fhir_refuses_a_certificate_with_two_cns(
    settings: Settings, registry, live_kafka, tmp_path: Path
) -> None:
    """The FHIR door took the first CN: a mapped CN followed by any other one named the sender."""
    pki = TestPki(tmp_path / "pki")
    server = pki.issue("127.0.0.1", server=True)
    suffix = uuid.uuid4().hex[:8]
    fhir = FhirRestSettings(
        port=0,
        metrics_port=None,
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
        tls_subjects={"lab-gw.chu.test": "CHU-TEST|LAB"},
        token_sha256={token_digest(TOKEN): "CHU-TEST|EDS"},
    )
    raw_topic = f"it.hardening.fhir.raw.{suffix}"
    service = FhirRestService(
        settings.model_copy(update={"fhir_rest": fhir}),
        CollectorRegistry(),
        raw_topic,
        f"it.hardening.seen.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    statuses = []
    try:
        async with aiohttp.ClientSession() as session:
            for cns in (["lab-gw.chu.test"], ["lab-gw.chu.test", "other.test"]):
                body = json.dumps(cs_observation()).encode()
                async with session.post(
                    f"https://127.0.0.1:{port}/fhir/Observation",
                    data=body,
                    headers={"Content-Type": "application/fhir+json"},
                    ssl=client_context(pki, issue_with_cns(pki, cns)),
                ) as response:
                    statuses.append(response.status)
    finally:
        await service.stop()
    assert statuses == [201, 401]
    (stored,) = read_topic(live_kafka, registry, raw_topic)
    assert stored["attributes"]["tls_subject"] == "lab-gw.chu.test"


def cs_observation() -> dict[str, Any]:
    import random

    from affluent.sim import synthetic

    rng = random.Random(18)
    return synthetic.fhir_observation(
        rng, synthetic.patient(rng, 2), f"obs-{uuid.uuid4().hex[:12]}", dt.datetime.now(dt.UTC)
    )


# --- the opposition endpoint ---------------------------------------------------------------------------


async def test_opposition_endpoint_serves_https_and_refuses_clear_text_beyond_loopback(
    tmp_path: Path,
) -> None:
    pki = TestPki(tmp_path / "pki")
    server = pki.issue("127.0.0.1", server=True)
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    keys = cs.load_test_keys()
    feeds = build_feeds(keys)
    token, digest = new_token()

    def endpoint(opposition: OppositionSettings) -> OppositionEndpoint:
        registry = CollectorRegistry()
        service = OppositionService(
            Settings(kafka=dead, opposition=opposition), keys, feeds, OppositionMetrics(registry)
        )
        service.producer = DurableProducer(dead)
        return OppositionEndpoint(service, StaticTokens({"dpo": digest}), registry)

    plain = endpoint(OppositionSettings())
    with pytest.raises(ConfigError, match="AFFLUENT_OPPOSITION__TLS_CERTIFICATE"):
        await plain.start("0.0.0.0", 0)
    secured = endpoint(OppositionSettings(tls_certificate=server.cert, tls_key=server.key))
    port = await secured.start("127.0.0.1", 0)
    try:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/opposition", ssl=context) as response:
                assert response.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(
                f"https://127.0.0.1:{port}/opposition", headers=headers, ssl=context
            ) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/health"):
                    pass
    finally:
        await secured.stop()
        await secured.service.stop()
        await plain.service.stop()


def test_opposition_serve_beyond_loopback_in_clear_text_is_one_line(live_kafka, registry) -> None:
    _, digest = new_token()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY")},
        "AFFLUENT_OPPOSITION__HOST": "0.0.0.0",
        "AFFLUENT_OPPOSITION__PORT": str(free_port()),
        "AFFLUENT_OPPOSITION__TOKENS": json.dumps({"dpo": digest}),
        "AFFLUENT_PSEUDO_KEY_FILE": str(KEY_FILE),
    }
    result = subprocess.run(
        [sys.executable, "-m", "affluent.cli", "opposition", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("affluent: error: the opposition endpoint"), result.stderr
    assert "AFFLUENT_OPPOSITION__ALLOW_PLAINTEXT" in lines[0]
