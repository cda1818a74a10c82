"""Health, readiness and Prometheus metrics over HTTP for every affluent process.

Each process gets its own ``CollectorRegistry`` passed down to its components (no hidden global), so
that several components, or several test instances, can live in one process without name clashes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ReadyCheck = Callable[[], Awaitable[bool]]
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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
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
        ok = True if self._ready is None else await self._ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)
