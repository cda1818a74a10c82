"""The HTTPS JSON door: ``POST /devices/{mapping}``, a thin aiohttp shell over intake and templates.

Order of decisions, each with its own answer: bearer token (401) → may this token post to this
template (403) → template exists (404) → body size (413) → the template can read every reading (400,
with the rule and location, never a value) → Kafka holds the raw record (202), or not (503 +
Retry-After). The body is read with the same template code the normalize stage uses, so what gets a
202 will map, short of the device registry (unknown devices are dead-lettered there).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from affluent.core.errors import KafkaUnavailable
from affluent.core.settings import DeviceSettings
from affluent.core.telemetry import serve_app
from connectors.devices.intake import authenticate, bearer, may_post, raw_message
from connectors.devices.metrics import DeviceMetrics
from connectors.raw import RawWriter
from formats.devices.templates import PayloadError, Template, read_payload

CONNECTOR = "devices_http"


def _problem(status: int, code: str, reason: str, location: str = "", **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": code, "reason": reason}
    if location:
        body["location"] = location
    return web.json_response(body, status=status, headers=headers or None)


class DeviceHttpServer:
    def __init__(
        self,
        settings: DeviceSettings,
        templates: Mapping[str, Template],
        writer: RawWriter,
        metrics: DeviceMetrics,
    ) -> None:
        self.settings = settings
        self.templates = templates
        self.writer = writer
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post("/devices/{mapping}", self.post)
        return app

    async def start(self) -> int:
        context = None
        if self.settings.tls_certificate and self.settings.tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.settings.tls_certificate), str(self.settings.tls_key))
            if self.settings.tls_client_ca is not None:
                context.load_verify_locations(cafile=str(self.settings.tls_client_ca))
                context.verify_mode = ssl.CERT_REQUIRED
        self._runner, self.port = await serve_app(self.app(), self.settings.host, self.settings.port, context)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await self._post(request)
        outcome = "accepted" if response.status == 202 else str(response.status)
        self.metrics.payloads.labels("http", outcome).inc()
        self.metrics.latency.labels("http").observe(time.perf_counter() - started)
        return response

    async def _post(self, request: web.Request) -> web.Response:
        token = authenticate(self.settings.tokens, bearer(request.headers.get("Authorization")))
        if token is None:
            return _problem(
                401, "unauthorized", "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"}
            )
        name = request.match_info["mapping"]
        if not may_post(token, name):
            return _problem(403, "forbidden", "this token may not post to this mapping")
        template = self.templates.get(name)
        if template is None:
            return _problem(404, "unknown_mapping", "no mapping template of this name")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _problem(413, "too_large", f"the body exceeds {self.settings.max_body_bytes} bytes")
        try:
            readings = read_payload(template, body)
        except PayloadError as exc:
            return _problem(400, exc.code, exc.reason, exc.location)
        message = raw_message(CONNECTOR, token.sender, template, body, len(readings), request.remote)
        try:
            await self.writer.write(message)
        except KafkaUnavailable:
            retry = str(self.settings.retry_after_s)
            return _problem(503, "unavailable", "the hub cannot store readings now", **{"Retry-After": retry})
        self.metrics.readings.labels("http", template.name).inc(len(readings))
        return web.json_response({"accepted": len(readings), "raw_id": message.raw_id}, status=202)
