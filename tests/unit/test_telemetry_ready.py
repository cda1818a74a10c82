"""/ready: dependency checks run together, their outcome cached, a failing or raising check → 503."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import CollectorRegistry

from affluent.core.errors import KafkaUnavailable
from affluent.core.telemetry import Readiness, TelemetryServer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_checks_are_cached_for_the_ttl_then_rerun() -> None:
    calls = {"kafka": 0, "registry": 0}
    broken = {"registry": False}

    def kafka() -> None:
        calls["kafka"] += 1

    def registry() -> None:
        calls["registry"] += 1
        if broken["registry"]:
            raise KafkaUnavailable("down")

    clock = Clock()
    ready = Readiness({"kafka": kafka, "registry": registry}, ttl_s=5, clock=clock)
    assert await ready() == {"kafka": True, "registry": True}
    broken["registry"] = True
    clock.now = 4.9
    assert await ready() == {"kafka": True, "registry": True}, "cached within the TTL"
    assert calls == {"kafka": 1, "registry": 1}
    clock.now = 5.0
    assert await ready() == {"kafka": True, "registry": False}
    assert calls == {"kafka": 2, "registry": 2}


async def test_concurrent_probes_share_one_round_of_checks() -> None:
    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.2)

    ready = Readiness({"kafka": slow}, ttl_s=60)
    results = await asyncio.gather(*(ready() for _ in range(5)))
    assert results == [{"kafka": True}] * 5
    assert len(calls) == 1


async def test_ready_endpoint_answers_503_with_the_failing_check() -> None:
    def down() -> None:
        raise OSError("connection refused")

    server = TelemetryServer(CollectorRegistry(), ready=Readiness({"kafka": lambda: None, "registry": down}))
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
                assert resp.status == 503
                assert await resp.json() == {"ready": False, "checks": {"kafka": True, "registry": False}}
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
    finally:
        await server.stop()
