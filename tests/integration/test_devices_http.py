"""The HTTPS JSON door against the real broker and registry, then the real normalize stage over what it
stored: three vendor shapes → Observations with the right codes, UCUM units and UTC times; bad payloads
→ 400 with a precise reason and nothing stored; bad tokens → 401/403; Kafka down → 503 + Retry-After."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from affluent.core.producer import DurableProducer
from affluent.core.settings import DeviceSettings, DeviceToken, KafkaSettings, Settings
from connectors.devices.http import DeviceHttpServer
from connectors.devices.intake import token_hash
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.service import DeviceService
from connectors.raw import RawWriter
from formats.devices.templates import load_templates
from schemas.registry import AvroCodec, Registry, decode, load_schema
from tests.support.devices import SHAPES, normalize_raw, sample

pytestmark = [pytest.mark.integration]

GATEWAY_TOKEN = "test-gateway-token-not-a-secret"
DEVICE_TOKEN = "test-device-token-not-a-secret"
TOKENS = [
    DeviceToken(sha256=token_hash(GATEWAY_TOKEN), sender="GW-TEST"),
    DeviceToken(sha256=token_hash(DEVICE_TOKEN), sender="BPM-00A1B2C3", mappings=["bp-single"]),
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def door(
    settings: Settings, registry: Registry, new_topic: Callable[..., str]
) -> AsyncIterator[tuple[str, str]]:
    raw_topic, dlq_topic = new_topic("test.device.raw"), new_topic("test.dlq")
    s = settings.model_copy(update={"devices": DeviceSettings(port=0, metrics_port=None, tokens=TOKENS)})
    service = DeviceService(s, CollectorRegistry(), raw_topic=raw_topic, dlq_topic=dlq_topic)
    port = await service.start(with_telemetry=False)
    yield f"http://127.0.0.1:{port}", raw_topic
    await service.stop()


async def post(url: str, body: bytes, token: str = GATEWAY_TOKEN) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={**auth(token), "Content-Type": "application/json"}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


async def test_three_shapes_reach_canonical_observations(door, reader, registry) -> None:
    base, raw_topic = door
    accepted = {}
    for shape in SHAPES:
        status, _, body = await post(f"{base}/devices/{shape}", sample(shape))
        assert status == 202, body
        accepted[shape] = body["accepted"]
    assert accepted == {"bp-single": 1, "scale-nested": 2, "gateway-batch": 3}
    records = reader(raw_topic, len(SHAPES))
    assert len(records) == len(SHAPES)
    raws = [decode(registry, value) for _, value in records]
    assert {r["attributes"]["mapping"] for r in raws} == set(SHAPES)
    assert {r["connector"] for r in raws} == {"devices_http"} and {r["protocol"] for r in raws} == {"device"}
    assert raws[0]["payload"] == sample("bp-single")  # untouched bytes
    observations, dead = normalize_raw(registry, [value for _, value in records if value is not None])
    assert dead == []
    got = {
        (o["code"]["system"].rsplit("/", 1)[-1].rsplit(":", 1)[-1], o["code"]["code"]): (
            round(o["value_quantity"]["value"], 2),
            o["value_quantity"]["unit"],
            o["effective_time"],
        )
        for o in observations
    }
    t_bp = datetime(2026, 11, 24, 7, 15, tzinfo=UTC)
    t_gw = datetime(2026, 11, 24, 7, 15, tzinfo=UTC)
    assert got == {
        ("loinc.org", "8480-6"): (128.0, "mm[Hg]", t_bp),
        ("loinc.org", "8462-4"): (82.0, "mm[Hg]", t_bp),
        ("loinc.org", "8867-4"): (71.0, "/min", t_bp),
        ("loinc.org", "29463-7"): (74.98, "kg", datetime(2026, 11, 24, 6, 30, tzinfo=UTC)),
        ("loinc.org", "8310-5"): (37.17, "Cel", datetime(2026, 11, 24, 6, 31, tzinfo=UTC)),
        ("10101", "150456"): (97.0, "%", t_gw),
        ("10101", "149530"): (72.0, "/min", t_gw),
        ("10101", "147842"): (64.0, "/min", datetime(2026, 11, 24, 7, 14, 30, 250000, tzinfo=UTC)),
    }
    assert all(o["envelope"]["source"]["connector"] == "devices_http" for o in observations)
    assert all(o["patient"]["key"].startswith("009001") for o in observations)


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        ({"systolic": None}, "missing_value"),
        ({"systolic": "high"}, "wrong_type"),
        ({"systolic": 1280}, "implausible_value"),
        ({"measuredAt": "yesterday at noon"}, "bad_timestamp"),
        ({"deviceId": None}, "missing_device"),
    ],
)
async def test_bad_payloads_get_a_precise_400_and_nothing_is_stored(door, reader, mutation, code) -> None:
    base, raw_topic = door
    doc = json.loads(sample("bp-single"))
    for key, value in mutation.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    status, _, body = await post(f"{base}/devices/bp-single", json.dumps(doc).encode())
    assert status == 400 and body["error"] == code and "location" in body
    assert "1280" not in json.dumps(body) and "yesterday" not in json.dumps(body)
    assert reader(raw_topic, 1, timeout_s=1.5) == []


async def test_tokens_are_checked_per_mapping(door, reader) -> None:
    base, raw_topic = door
    assert (await post(f"{base}/devices/bp-single", sample("bp-single"), "wrong"))[0] == 401
    status, headers, _ = await post(f"{base}/devices/bp-single", sample("bp-single"), "")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert (await post(f"{base}/devices/scale-nested", sample("scale-nested"), DEVICE_TOKEN))[0] == 403
    assert (await post(f"{base}/devices/nope", sample("bp-single")))[0] == 404
    assert (await post(f"{base}/devices/bp-single", sample("bp-single"), DEVICE_TOKEN))[0] == 202
    (record,) = reader(raw_topic, 1)
    assert record[0] == b"BPM-00A1B2C3|bp-single"  # Kafka key: sender|template, no patient data


async def test_unknown_device_becomes_a_dead_letter_with_its_reason(door, reader, registry) -> None:
    base, raw_topic = door
    assert (await post(f"{base}/devices/bp-single", sample("bp-single")))[0] == 202
    records = reader(raw_topic, 1)
    observations, dead = normalize_raw(registry, [v for _, v in records if v is not None], entries={})
    assert observations == []
    assert [(d["reason_code"], d["location"], d["stage"]) for d in dead] == [
        ("unknown_device", "$", "normalize")
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_kafka_down_is_503_with_retry_after(settings: Settings, registry: Registry) -> None:
    dead_kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_free_port()}", delivery_timeout_ms=1000)
    producer = DurableProducer(dead_kafka)
    codec = AvroCodec(registry, "ingest.device.raw-value", load_schema("raw_message"), "BACKWARD")
    device_settings = DeviceSettings(port=0, tokens=TOKENS, retry_after_s=7)
    server = DeviceHttpServer(
        device_settings,
        load_templates(),
        RawWriter(producer, codec, "ingest.device.raw"),
        DeviceMetrics(CollectorRegistry()),
    )
    port = await server.start()
    try:
        status, headers, body = await post(f"http://127.0.0.1:{port}/devices/bp-single", sample("bp-single"))
    finally:
        await server.stop()
        producer.close(timeout_s=0.5)
    assert status == 503 and headers["Retry-After"] == "7" and body["error"] == "unavailable"


async def test_https_with_client_certificates(
    settings: Settings, registry: Registry, new_topic, tmp_path
) -> None:
    import ssl

    from tests.support.certs import TestPki

    pki = TestPki(tmp_path / "pki")
    server = pki.issue("affluent-devices.test", server=True)
    devices = DeviceSettings(
        port=0,
        metrics_port=None,
        tokens=TOKENS,
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
    )
    service = DeviceService(
        settings.model_copy(update={"devices": devices}),
        CollectorRegistry(),
        raw_topic=new_topic("test.device.raw"),
    )
    port = await service.start(with_telemetry=False)
    url = f"https://127.0.0.1:{port}/devices/bp-single"
    try:
        with_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
        gateway = pki.issue("gw-0042.test")
        with_cert.load_cert_chain(str(gateway.cert), str(gateway.key))
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url, data=sample("bp-single"), headers=auth(GATEWAY_TOKEN), ssl=with_cert
            ) as resp:
                assert resp.status == 202
            without_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
            with pytest.raises(aiohttp.ClientError):
                async with session.post(
                    url, data=sample("bp-single"), headers=auth(GATEWAY_TOKEN), ssl=without_cert
                ):
                    pass
    finally:
        await service.stop()
