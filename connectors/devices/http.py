"""The HTTPS JSON door: ``POST /devices/{mapping}``, a thin aiohttp shell over intake and templates.

Order of decisions, each with its own answer: bearer token (401) → may this token post to this
template (403) → template exists (404) → body size (413) → the template can read every reading (400,
with the rule and location, never a value) → every reading's device is bound to the token's sender in
the device registry at the reading's time (403 ``device_not_bound``, and a dead letter in
``dlq.ingest``: a gateway trying other gateways' devices is worth an operator's look) → Kafka holds the
raw record (202), or not (503 + Retry-After). The body is read with the same template code the
normalize stage uses, so what gets a 202 will map, short of the device registry (unknown devices are
dead-lettered there).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from affluent.core.errors import KafkaUnavailable
from affluent.core.limits import serve_limited
from affluent.core.settings import DeviceSettings
from affluent.core.tls import server_context, subject_cn
from connectors.devices.intake import (
    CONTENT_TYPE,
    PROTOCOL,
    authenticate,
    bearer,
    may_post,
    payload_raw_id,
    raw_message,
    unbound_reading,
)
from connectors.devices.metrics import DeviceMetrics
from connectors.raw import RawWriter
from formats.devices.registry import DeviceRegistry
from formats.devices.templates import PayloadError, Reading, Template, read_payload
from formats.reasons import ReasonCode
from schemas.deadletter import DeadLetterWriter

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
        registry: DeviceRegistry | None = None,
        dead_letters: DeadLetterWriter | None = None,
    ) -> None:
        self.settings = settings
        self.templates = templates
        self.writer = writer
        self.metrics = metrics
        # The device registry (control.devices) and where refused readings go; None: no binding check.
        self.registry = registry
        self.dead_letters = dead_letters
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_post("/devices/{mapping}", self.post)
        return app

    async def start(self) -> int:
        s = self.settings
        context: ssl.SSLContext | None = None
        if s.tls_certificate and s.tls_key:
            context = server_context(
                s.tls_certificate,
                s.tls_key,
                key_setting="AFFLUENT_DEVICES__TLS_KEY",
                client_ca=s.tls_client_ca,
                require_client_certificate=True,
            )
        self._runner, self.port = await serve_limited(
            self.app(),
            s.host,
            s.port,
            s.limits,
            lambda reason: self.metrics.connections_refused.labels("devices", reason).inc(),
            context,
        )
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
        refused = unbound_reading(
            self.registry, readings, token.sender, self.settings.require_gateway_binding
        )
        if refused is not None:
            return await self._not_bound(token.sender, template, body, refused)
        message = raw_message(CONNECTOR, token.sender, template, body, len(readings), request.remote)
        transport = request.transport
        subject = subject_cn(transport.get_extra_info("peercert") if transport is not None else None)
        if subject is not None:
            message = replace(message, attributes={**message.attributes, "tls_subject": subject})
        try:
            await self.writer.write(message)
        except KafkaUnavailable:
            retry = str(self.settings.retry_after_s)
            return _problem(503, "unavailable", "the hub cannot store readings now", **{"Retry-After": retry})
        self.metrics.readings.labels("http", template.name).inc(len(readings))
        return web.json_response({"accepted": len(readings), "raw_id": message.raw_id}, status=202)

    async def _not_bound(
        self, sender: str, template: Template, body: bytes, reading: Reading
    ) -> web.Response:
        """403, once the refusal is stored as a dead letter (503 when Kafka cannot store it: the sender
        then retries, and is refused again, so the attempt is never lost from the record)."""
        code = ReasonCode.DEVICE_NOT_BOUND
        stored = self.dead_letters is None or await self.dead_letters.write(
            stage="ingest",
            reason_code=code,
            reason=code.text,
            location=reading.location,
            rule="device registry",
            payload=body,
            content_type=CONTENT_TYPE,
            source_facility=sender,
            source_application=template.name,
            raw_id=payload_raw_id(sender, template.name, body),
            connector=CONNECTOR,
            protocol=PROTOCOL,
        )
        if not stored:
            retry = str(self.settings.retry_after_s)
            return _problem(503, "unavailable", "the hub cannot store readings now", **{"Retry-After": retry})
        return _problem(code.http_status, code, code.text, reading.location)
