"""Issue #18, limits: every door's connection cap and slow-start timeouts with real sockets, the Bundle
entry cap and the validation pool of the FHIR door, and deeply nested JSON at every JSON door.

The doors run without Kafka (their producers are never reached: everything here is refused before a
write), so what is measured is the listening socket itself: N connections held, the N+1st closed at
once and counted; a peer that never finishes its headers (or, MLLP, never sends a byte) let go.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from affluent.core.auth import StaticTokens, new_token
from affluent.core.settings import (
    ConnectionLimits,
    DeviceSettings,
    DeviceToken,
    FhirRestSettings,
    KafkaSettings,
    MllpSettings,
    OppositionSettings,
    Settings,
)
from connectors.devices.http import DeviceHttpServer
from connectors.devices.intake import token_hash
from connectors.devices.metrics import DeviceMetrics
from connectors.fhir_rest.auth import Authenticator, token_digest
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.fhir_rest.server import FhirRestServer
from connectors.mllp.server import MllpServer
from formats.devices.templates import load_templates
from streams.opposition.http import OppositionEndpoint
from streams.opposition.service import OppositionMetrics, OppositionService
from streams.pseudonymize.worker import build_feeds
from tests.support import canonical_samples as cs
from tests.support.fhir_door import TOKEN
from tests.support.pipeline import free_port

pytestmark = [pytest.mark.integration]

CAP = 3
LIMITS = ConnectionLimits(max_connections=CAP, header_timeout_s=0.6, idle_timeout_s=0.8)
REQUEST = b"GET /health HTTP/1.1\r\nHost: door\r\n\r\n"
DEVICE_TOKEN = "device-test-token-not-a-secret"


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the door wrote before closing, or None when the connection is still open after ``seconds``."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return None


async def check_cap(port: int, served: bytes, answer: bytes) -> None:
    """``CAP`` silent connections held; one more is closed at once; a freed slot admits a request again."""
    held = [await connect(port) for _ in range(CAP)]
    await asyncio.sleep(0.05)
    reader, writer = await connect(port)
    refused = await closed_within(reader, 0.4)  # well before the header timeout
    assert refused is not None, "the connection over the cap was not closed"
    assert refused.startswith(answer)
    writer.close()
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    reader, writer = await connect(port)
    writer.write(served)
    assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 ")
    writer.close()


async def check_slow_start(port: int, served: bytes) -> None:
    """Headers never finished → closed after header_timeout_s; idle after a request → idle_timeout_s."""
    reader, writer = await connect(port)
    writer.write(served[:20])  # one line of the request, and no more
    assert await closed_within(reader, 3) is not None, "a slow request head kept the connection"
    writer.close()
    reader, writer = await connect(port)
    writer.write(served)
    assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 ")
    assert await closed_within(reader, 0.3) is None  # a served connection is not cut at the header timeout
    assert await closed_within(reader, 3) is not None, "an idle keep-alive connection was kept"
    writer.close()


def refused(registry: CollectorRegistry, door: str, reason: str) -> float:
    value = registry.get_sample_value("affluent_connections_refused_total", {"door": door, "reason": reason})
    return value or 0.0


# --- the doors, without Kafka ----------------------------------------------------------------------


def fhir_settings(**changes: Any) -> FhirRestSettings:
    fields: dict[str, Any] = {
        "port": 0,
        "metrics_port": None,
        "validation_processes": 0,
        "token_sha256": {token_digest(TOKEN): "CHU-TEST|EDS"},
        "limits": LIMITS,
    }
    fields.update(changes)
    return FhirRestSettings(**fields)


async def fhir_door(settings: FhirRestSettings, registry: CollectorRegistry) -> FhirRestServer:
    server = FhirRestServer(settings, None, Authenticator(settings), FhirRestMetrics(registry))  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.fixture
async def fhir() -> AsyncIterator[tuple[FhirRestServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = await fhir_door(fhir_settings(), registry)
    yield server, registry
    await server.stop()


async def test_the_fhir_door_caps_connections_and_slow_starts(fhir) -> None:
    server, registry = fhir
    metadata = b"GET /fhir/metadata HTTP/1.1\r\nHost: door\r\n\r\n"
    await check_cap(server.port, metadata, b"HTTP/1.1 503 Service Unavailable")
    assert refused(registry, "fhir", "limit") == 1
    await check_slow_start(server.port, metadata)
    assert refused(registry, "fhir", "timeout") >= 1


async def test_the_device_door_caps_connections_and_slow_starts() -> None:
    registry = CollectorRegistry()
    tokens = [DeviceToken(sha256=token_hash(DEVICE_TOKEN), sender="GW-TEST")]
    settings = DeviceSettings(port=0, metrics_port=None, tokens=tokens, limits=LIMITS)
    server = DeviceHttpServer(settings, load_templates(), None, DeviceMetrics(registry))  # type: ignore[arg-type]
    port = await server.start()
    try:
        unknown = b"GET /devices/x HTTP/1.1\r\nHost: door\r\n\r\n"  # 405: a served answer all the same
        await check_cap(port, unknown, b"HTTP/1.1 503 Service Unavailable")
        assert refused(registry, "devices", "limit") == 1
        await check_slow_start(port, unknown)
        deep = b"[" * 50_000 + b"]" * 50_000
        headers = {"Authorization": f"Bearer {DEVICE_TOKEN}", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/devices/bp-single", data=deep, headers=headers) as answer,
        ):
            assert answer.status == 400
    finally:
        await server.stop()


@pytest.fixture
async def opposition() -> AsyncIterator[tuple[int, str, CollectorRegistry]]:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    keys = cs.load_test_keys()
    registry = CollectorRegistry()
    settings = Settings(kafka=dead, opposition=OppositionSettings(limits=LIMITS))
    service = OppositionService(settings, keys, build_feeds(keys), OppositionMetrics(registry))
    token, digest = new_token()
    endpoint = OppositionEndpoint(service, StaticTokens({"dpo": digest}), registry)
    port = await endpoint.start("127.0.0.1", 0)
    yield port, token, registry
    await endpoint.stop()


async def test_the_opposition_endpoint_caps_connections_and_slow_starts(opposition) -> None:
    port, _, registry = opposition
    await check_cap(port, REQUEST, b"HTTP/1.1 503 Service Unavailable")
    assert refused(registry, "opposition", "limit") == 1
    await check_slow_start(port, REQUEST)


@pytest.mark.parametrize("body", [b"[" * 4000, b'{"ipp":' * 500 + b"1" + b"}" * 500, b"[" * 1500])
async def test_deeply_nested_json_at_the_opposition_endpoint_is_400_not_500(opposition, body) -> None:
    port, token, registry = opposition
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/opposition", data=body, headers=headers) as answer,
    ):
        assert answer.status == 400
        assert (await answer.json())["error"] == "invalid_objection"
    assert registry.get_sample_value(
        "affluent_opposition_requests_total", {"action": "register", "outcome": "invalid"}
    )


class NoKafka:
    async def send(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing here reaches Kafka")

    def send_nowait(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing here reaches Kafka")


class NoCache:
    topic = "ack"

    def get(self, key: str) -> None:
        return None

    def __len__(self) -> int:
        return 0


async def test_the_mllp_door_caps_connections_and_silent_peers() -> None:
    registry = CollectorRegistry()
    settings = MllpSettings(port=0, metrics_port=None, max_connections=CAP, first_byte_timeout_s=0.6)
    server = MllpServer(settings, NoKafka(), None, NoCache(), None, registry)  # type: ignore[arg-type]
    port = await server.start()
    try:
        held = [await connect(port) for _ in range(CAP)]
        await asyncio.sleep(0.05)
        reader, writer = await connect(port)
        assert await closed_within(reader, 0.4) == b"", "the connection over the cap was not closed"
        assert registry.get_sample_value(
            "affluent_connections_refused_total", {"door": "mllp", "reason": "limit"}
        )
        writer.close()
        held[0][1].write(b"\x0b")  # a first byte: from now on the 600 s idle timeout applies
        for r, _ in held[1:]:
            assert await closed_within(r, 3) == b"", "a silent connection was kept"
        assert await closed_within(held[0][0], 0.5) is None
        assert (
            registry.get_sample_value(
                "affluent_connections_refused_total", {"door": "mllp", "reason": "timeout"}
            )
            == CAP - 1
        )
        for _, w in held:
            w.close()
    finally:
        await server.stop()


# --- Bundles: entry cap, validation pool ------------------------------------------------------------


def batch(entries: int) -> bytes:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    entry = {"resource": obs, "request": {"method": "POST", "url": "Observation"}}
    return json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [entry] * entries}).encode()


async def post(port: int, path: str, body: bytes) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/fhir{path}", data=body, headers=headers) as answer,
    ):
        text = await answer.text()
        return answer.status, (json.loads(text) if text else None)


async def test_bundles_over_the_entry_cap_are_413_in_the_validation_pool_which_stops_with_the_door() -> None:
    settings = fhir_settings(validation_processes=1, max_bundle_entries=50)
    server = await fhir_door(settings, CollectorRegistry())
    assert server._pool is not None
    workers = list(server._pool._processes.values())  # type: ignore[attr-defined]
    try:
        for path in ("", "/Bundle"):
            status, outcome = await post(server.port, path, batch(51))
            assert status == 413, outcome
            assert outcome["issue"][0]["code"] == "too-costly"
        notification = json.loads(batch(51)) | {"type": "history"}
        status, outcome = await post(
            server.port, "/subscription-notification", json.dumps(notification).encode()
        )
        assert (status, outcome["issue"][0]["code"]) == (413, "too-costly")
    finally:
        await server.stop()
    assert workers and not any(w.is_alive() for w in workers)


def deep_resource(depth: int) -> bytes:
    return b'{"resourceType":"Observation","status":"final","code":{"text":"x"},"x":' + (
        b"[" * depth + b"]" * depth + b"}"
    )


@pytest.mark.parametrize("depth", [100, 500, 900, 960, 980, 990, 995, 1000, 5000, 200_000])
async def test_deeply_nested_json_at_the_fhir_door_is_a_4xx_never_a_500(fhir, depth) -> None:
    server, _ = fhir
    resource = deep_resource(depth)
    entry = b'{"request":{"method":"POST","url":"Observation"},"resource":' + resource + b"}"
    status_entry = b'{"resource":{"resourceType":"Parameters","parameter":[{"name":"type","valueCode":"event-notification"}]}}'
    calls: list[tuple[str, bytes]] = [
        ("/Observation", resource),
        ("", b'{"resourceType":"Bundle","type":"batch","entry":[' + entry + b"]}"),
        ("", b'{"resourceType":"Bundle","type":"transaction","entry":[' + entry + b"]}"),
        (
            "/subscription-notification",
            b'{"resourceType":"Bundle","type":"history","entry":['
            + status_entry
            + b',{"resource":'
            + resource
            + b"}]}",
        ),
    ]
    for path, body in calls:
        status, outcome = await post(server.port, path, body)
        if status == 200 and path == "":  # a batch answers per entry
            status = int(outcome["entry"][0]["response"]["status"])
        assert 400 <= status < 500, (path, status, outcome)
