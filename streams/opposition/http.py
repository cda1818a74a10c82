"""The authenticated HTTP endpoint for objections: a thin shell over :class:`OppositionService`.

``POST /opposition`` registers, ``POST /opposition/withdraw`` withdraws; the identity travels in the JSON
body (``{"ins": …}`` and/or ``{"ipp": …, "authority": …}``), never in the URL, so access logs and proxies
never see it. ``GET /opposition`` gives the registry's entry count. Answers:

- 201 (registered) / 200 (withdrawn) only once Kafka confirmed every write;
- 400 with the field at fault (never its value), 401 without a valid bearer token, 415 for a body
  that is not JSON, 413 above 4 KiB (an objection is tiny);
- 503 with ``Retry-After`` when Kafka did not confirm — the objection is not in force, register again.

Every request to change the registry is in the audit trail (``control.audit``): who (the token's
principal), the keyed hashes, the outcome; a change is made only once its entry is confirmed.

``/health``, ``/ready`` and ``/metrics`` are unauthenticated and hold no identity.

Served over HTTPS when ``opposition.tls_certificate``/``tls_key`` are set; beyond loopback it must be
(:func:`check_exposure`): the bodies name patients and the bearer tokens would be anyone's on the path.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from affluent.core.auth import StaticTokens
from affluent.core.errors import KafkaUnavailable
from affluent.core.limits import serve_limited
from affluent.core.settings import OppositionSettings
from affluent.core.telemetry import ReadyCheck, ready_response
from affluent.core.tls import refuse_clear_http, server_context
from schemas.audit import UNKNOWN_CALLER, AuditAction, AuditChannel, AuditReason
from streams.opposition.objection import InvalidObjection, Objection
from streams.opposition.service import OppositionService

MAX_BODY = 4096
RETRY_AFTER_S = "5"
AUDITED = {"register": AuditAction.OPPOSITION_ADD, "withdraw": AuditAction.OPPOSITION_REMOVE}


def _problem(status: int, code: str, text: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": text}, status=status, headers=headers or None)


def check_exposure(settings: OppositionSettings, host: str | None = None) -> None:
    """Refuse to listen beyond loopback in clear text (``host``: where it will really listen)."""
    refuse_clear_http(
        "the opposition endpoint",
        "AFFLUENT_OPPOSITION",
        settings.host if host is None else host,
        settings.tls_certificate,
        settings.tls_key,
        settings.allow_plaintext,
    )


class OppositionEndpoint:
    def __init__(
        self,
        service: OppositionService,
        tokens: StaticTokens,
        metrics_registry: CollectorRegistry,
        ready: ReadyCheck | None = None,
    ) -> None:
        self.service = service
        self.ready = ready
        self.tokens = tokens
        self.metrics_registry = metrics_registry
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/opposition", self._register)
        app.router.add_post("/opposition/withdraw", self._withdraw)
        app.router.add_get("/opposition", self._count)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> int:
        s = self.service.settings.opposition
        check_exposure(s, host)
        context = None
        if s.tls_certificate is not None and s.tls_key is not None:
            context = server_context(s.tls_certificate, s.tls_key, key_setting="AFFLUENT_OPPOSITION__TLS_KEY")
        self._runner, self.port = await serve_limited(
            self.app(),
            host,
            port,
            s.limits,
            lambda reason: self.service.metrics.connections_refused.labels("opposition", reason).inc(),
            context,
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _authorized(self, request: web.Request, action: str) -> str | web.Response:
        principal = self.tokens.principal(request.headers.get("Authorization"))
        if principal is None:
            self.service.metrics.requests.labels(action, "unauthorized").inc()
            return _problem(
                401, "unauthorized", "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"}
            )
        return principal

    async def _objection(self, request: web.Request, action: str) -> Objection | web.Response:
        if request.content_type != "application/json":
            self.service.metrics.requests.labels(action, "invalid").inc()
            return _problem(415, "unsupported_media_type", "send application/json")
        if request.content_length is not None and request.content_length > MAX_BODY:
            self.service.metrics.requests.labels(action, "invalid").inc()
            return _problem(413, "too_large", f"an objection body is at most {MAX_BODY} bytes")
        try:
            body: Any = json.loads(await request.read())
            return Objection.from_json(body)
        except web.HTTPRequestEntityTooLarge:
            self.service.metrics.requests.labels(action, "invalid").inc()
            return _problem(413, "too_large", f"an objection body is at most {MAX_BODY} bytes")
        except RecursionError:  # 4 KiB of "[" nests deeper than the parser's stack: the sender's fault
            self.service.metrics.requests.labels(action, "invalid").inc()
            return _problem(400, "invalid_objection", "the body nests too deeply to be an objection")
        except (InvalidObjection, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self.service.metrics.requests.labels(action, "invalid").inc()
            detail = str(exc) if isinstance(exc, InvalidObjection) else "the body is not valid JSON"
            return _problem(400, "invalid_objection", detail)

    async def _register(self, request: web.Request) -> web.Response:
        return await self._handle(request, "register")

    async def _withdraw(self, request: web.Request) -> web.Response:
        return await self._handle(request, "withdraw")

    async def _handle(self, request: web.Request, action: str) -> web.Response:
        audited = AUDITED[action]
        principal = await self._authorized(request, action)
        if isinstance(principal, web.Response):
            self.service.refused(audited, UNKNOWN_CALLER, AuditChannel.HTTP, AuditReason.UNAUTHORIZED)
            return principal
        objection = await self._objection(request, action)
        if isinstance(objection, web.Response):
            self.service.refused(audited, principal, AuditChannel.HTTP, AuditReason.INVALID_REQUEST)
            return objection
        try:
            if action == "register":
                done = await self.service.register(objection, principal, AuditChannel.HTTP)
                body = {"status": "registered", "entries": done.entries, "retractions": done.retractions}
                status = 201
            else:
                entries = await self.service.withdraw(objection, principal, AuditChannel.HTTP)
                body, status = {"status": "withdrawn", "entries": entries}, 200
        except KafkaUnavailable:
            self.service.metrics.requests.labels(action, "kafka_unavailable").inc()
            return _problem(
                503,
                "storage_unavailable",
                f"not {action}ed: Kafka did not confirm the write; send the request again",
                **{"Retry-After": RETRY_AFTER_S},
            )
        self.service.metrics.requests.labels(action, "done").inc()
        return web.json_response(body, status=status)

    async def _count(self, request: web.Request) -> web.Response:
        principal = await self._authorized(request, "count")
        if isinstance(principal, web.Response):
            return principal
        return web.json_response({"entries": self.service.count()})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "up"})

    async def _ready(self, request: web.Request) -> web.Response:
        return await ready_response(self.ready)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
