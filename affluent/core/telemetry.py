"""Health, readiness and Prometheus metrics over HTTP for every affluent process.

Each process gets its own ``CollectorRegistry`` passed down to its components (no hidden global), so
that several components, or several test instances, can live in one process without name clashes.

``/ready`` answers what a load balancer or Kubernetes needs to know: can this process do its work now,
that is, do its dependencies answer (:mod:`schemas.readiness` adds the schema registry to Kafka).
Probes come often and from several places, so the answer is cached for a few seconds and one round of
checks runs at a time; a check that hangs costs its own short timeout, never the probe's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from affluent.core.kafka import wait_for_kafka
from affluent.core.settings import KafkaSettings

ReadyCheck = Callable[[], Awaitable[bool | Mapping[str, bool]]]
# A dependency check: returns when the dependency answers, raises (any exception) when it does not.
Check = Callable[[], object]

READY_TTL_S = 5.0
CHECK_TIMEOUT_S = 2.0


def kafka_check(kafka: KafkaSettings, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Kafka answers a metadata request (a listening port is not enough, see ``wait_for_kafka``)."""
    return lambda: wait_for_kafka(kafka, timeout_s)


class Readiness:
    """Named dependency checks, run together in threads, their outcome cached for ``ttl_s``."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        ttl_s: float = READY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._ttl = ttl_s
        self._clock = clock
        self._last: dict[str, bool] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> dict[str, bool]:
        async with self._lock:
            if self._last is None or self._clock() - self._at >= self._ttl:
                names = list(self._checks)
                outcomes = await asyncio.gather(
                    *(asyncio.to_thread(self._checks[n]) for n in names), return_exceptions=True
                )
                self._last = {
                    n: not isinstance(o, BaseException) for n, o in zip(names, outcomes, strict=True)
                }
                self._at = self._clock()
            return dict(self._last)


HealthReport = Callable[[], dict[str, object]]


class TelemetryServer:
    """``/metrics`` (Prometheus text), ``/health`` (process alive) and ``/ready`` (dependencies usable)."""

    def __init__(
        self, registry: CollectorRegistry, ready: ReadyCheck | None = None, health: HealthReport | None = None
    ) -> None:
        self.registry = registry
        self._ready = ready
        self._health_report = health
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready_handler)
        self._runner, self.port = await serve_app(app, host, port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        extra = self._health_report() if self._health_report is not None else {}
        return web.json_response({"status": "up", **extra})

    async def _ready_handler(self, request: web.Request) -> web.Response:
        return await ready_response(self._ready)


async def serve_app(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` (no access log: URLs and peers are not for logs) and return its runner and the port
    really bound — the one the OS chose when ``port`` is 0, as tests ask."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port


async def ready_response(ready: ReadyCheck | None) -> web.Response:
    """``/ready`` for any affluent HTTP server: 200 or 503, and which dependency failed."""
    result = True if ready is None else await ready()
    checks = dict(result) if isinstance(result, Mapping) else {}
    ok = all(checks.values()) if isinstance(result, Mapping) else bool(result)
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)
