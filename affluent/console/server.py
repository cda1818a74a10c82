"""The console's HTTP server: who may see what, which forms are genuine, and which page answers.

Handlers stay thin: authenticate (:mod:`affluent.console.auth`), check the form, ask the backend
(:mod:`affluent.console.data`), render (:mod:`affluent.console.pages`). Every mistake is a page with
one line and a status — 400 a wrong parameter, 401/403 credentials or a forged form, 404 nothing
there, 409 a re-drive refused, 503 Kafka, the registry or ``affluent run`` away — never a traceback:
the middleware below turns affluent's errors into those pages, and anything else into a one-line 500
whose traceback goes to the log only.

The console listens on loopback by default; beyond it, only over TLS (:func:`check_exposure`), since
tokens, session cookies and the dead letters' payloads would otherwise cross the network in clear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from aiohttp import web

from affluent import dlq
from affluent.console import pages
from affluent.console.auth import Caller, Sessions, identify
from affluent.console.data import Backend, KafkaBackend, NotFound, RedriveRefused
from affluent.core.auth import StaticTokens
from affluent.core.errors import AffluentError, ConfigError, Unavailable
from affluent.core.limits import serve_limited
from affluent.core.settings import ConsoleSettings, Settings
from affluent.core.tls import refuse_clear_http, server_context
from schemas.audit import UNKNOWN_CALLER, AuditReason, InvalidAuditEntry

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
RAW_ID = "{raw_id:[0-9a-f]{8,64}}"
CALLER = web.RequestKey("caller", Caller)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # the pages show patients' payloads: no copy in a browser's cache
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_exposure(settings: ConsoleSettings, host: str | None = None) -> None:
    """Beyond loopback only over TLS, and never without a (well-formed) way to log in (``host``: where it
    will listen)."""
    refuse_clear_http(
        "the console",
        "AFFLUENT_CONSOLE",
        settings.host if host is None else host,
        settings.tls_certificate,
        settings.tls_key,
        settings.allow_plaintext,
    )
    if settings.token_sha256:
        StaticTokens(settings.token_sha256, origin="AFFLUENT_CONSOLE__TOKEN_SHA256")  # names and digests
    elif not settings.tls_client_subjects:
        raise ConfigError(
            "the console has nobody to let in: set AFFLUENT_CONSOLE__TOKEN_SHA256 (affluent console token "
            "--name NAME prints it) or AFFLUENT_CONSOLE__TLS_CLIENT_SUBJECTS"
        )


def start_checks(settings: Settings) -> None:
    """What ``affluent console`` refuses before it listens (files, port, exposure), as the doors do;
    then its configuration goes to the audit trail (hash only, best effort)."""
    from affluent.audit_cli import record_start
    from affluent.components import check_files, check_ports

    check_files(settings.console, "AFFLUENT_CONSOLE")
    check_ports([(settings.console.host, settings.console.port)])
    check_exposure(settings.console)
    record_start(settings, "console", ["console"])


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _local(path: str) -> str:
    """A redirect target that stays on the console (no ``//host`` nor ``https://…``)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


class Console:
    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.config = settings.console
        self.backend: Backend = backend if backend is not None else KafkaBackend(settings)
        self.tokens = (
            StaticTokens(self.config.token_sha256, origin="AFFLUENT_CONSOLE__TOKEN_SHA256")
            if self.config.token_sha256
            else None
        )
        self.sessions = Sessions(self.config.session_lifetime_s, clock)
        self.tls = self.config.tls_certificate is not None
        self.cookie = "__Host-affluent-console" if self.tls else "affluent-console"
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._authenticate])
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/", self._health)
        app.router.add_get("/dlq", self._dlq)
        app.router.add_get("/dlq/letters", self._letters)
        app.router.add_get(f"/dlq/{RAW_ID}", self._dead_letter)
        app.router.add_post(f"/dlq/{RAW_ID}/redrive", self._redrive)
        app.router.add_get("/trace", self._trace)
        app.on_startup.append(lambda _: self.backend.start())
        app.on_cleanup.append(lambda _: self.backend.stop())
        return app

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        host = self.config.host if host is None else host
        check_exposure(self.config, host)
        context = None
        if self.config.tls_certificate is not None and self.config.tls_key is not None:
            context = server_context(
                self.config.tls_certificate,
                self.config.tls_key,
                key_setting="AFFLUENT_CONSOLE__TLS_KEY",
                client_ca=self.config.tls_client_ca,
            )
        self._runner, self.port = await serve_limited(
            self.app(),
            host,
            self.config.port if port is None else port,
            self.config.limits,
            lambda reason: log.info("console: a connection refused (%s)", reason),
            context,
        )
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- middlewares ----------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own (404, 405, 413) and the refusals below
            line = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            response = self._error(request, exc.status, line or exc.reason)
            for name in ("WWW-Authenticate", "Allow"):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        except RedriveRefused as exc:
            frame = self._frame(request[CALLER])
            response = _html(
                pages.redrive_refused_page(request.match_info["raw_id"], str(exc), exc.lines, frame), 409
            )
        except NotFound as exc:
            response = self._error(request, 404, str(exc))
        except Unavailable as exc:
            response = self._error(request, 503, f"{exc}: try again when it is back")
        except (AffluentError, InvalidAuditEntry) as exc:
            response = self._error(request, 400, str(exc))
        except Exception:
            log.exception("console: %s %s failed", request.method, request.path)
            response = self._error(
                request, 500, "the console failed on this request; the reason is in its log"
            )
        response.headers.update(HEADERS)
        return response

    def _error(self, request: web.Request, status: int, line: str) -> web.Response:
        caller = request.get(CALLER)
        frame = self._frame(caller) if caller is not None else None
        return _html(pages.error_page(status, line, frame), status)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/login":
            return await handler(request)
        transport = request.transport
        caller = identify(
            self.tokens,
            self.config.tls_client_subjects,
            self.sessions,
            request.headers.get("Authorization"),
            transport.get_extra_info("peercert") if transport is not None else None,
            request.cookies.get(self.cookie),
        )
        if caller is None:
            if request.method == "POST" and request.path.endswith("/redrive"):
                raw_id = request.match_info.get("raw_id", "")  # "" when no route matched
                await self.backend.refused(UNKNOWN_CALLER, raw_id, AuditReason.UNAUTHORIZED)
            if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                return _redirect(f"/login?next={quote(request.path_qs, safe='')}")
            raise web.HTTPUnauthorized(
                text="a console token is required (Authorization: Bearer, a client certificate, or /login)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request[CALLER] = caller
        return await handler(request)

    def _frame(self, caller: Caller) -> pages.Frame:
        return pages.Frame(caller.who, self.sessions.csrf(caller), can_logout=caller.how == "session")

    def _since(self, request: web.Request) -> datetime:
        text = request.query.get("since", "").strip()
        if not text:
            return datetime.now(UTC) - timedelta(days=self.config.dlq_days)
        return dlq.parse_time(text, "since")

    # --- login ----------------------------------------------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        return _html(pages.login_page(_local(request.query.get("next", "/"))))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        target = _local(str(form.get("next") or "/"))
        token = str(form.get("token") or "").strip()
        who = self.tokens.principal(f"Bearer {token}") if self.tokens is not None and token else None
        if who is None:
            log.warning("console: a login with an unknown token")
            return _html(pages.login_page(target, "this token is not valid here"), 401)
        response = _redirect(target)
        response.set_cookie(
            self.cookie,
            self.sessions.open(who),
            max_age=int(self.config.session_lifetime_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.tls,
        )
        return response

    async def _checked_form(self, request: web.Request) -> tuple[Caller, dict[str, str]]:
        """The POSTed form of the authenticated caller, when its CSRF token is theirs; else 403."""
        caller = request[CALLER]
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not self.sessions.csrf_ok(caller, form.get("csrf")):
            if request.path.endswith("/redrive"):
                await self.backend.refused(caller.who, request.match_info["raw_id"], AuditReason.UNAUTHORIZED)
            raise web.HTTPForbidden(
                text="this form did not come from the console's own page (no valid CSRF token)"
            )
        return caller, form

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        await self._checked_form(request)
        self.sessions.close(request.cookies.get(self.cookie))
        response = _redirect("/login")
        response.del_cookie(self.cookie, path="/")
        return response

    # --- pages ----------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        view = await self.backend.health()
        return _html(pages.health_page(view, self._frame(request[CALLER])))

    async def _dlq(self, request: web.Request) -> web.StreamResponse:
        since = self._since(request)
        rows = await self.backend.dead_letter_rows(since)
        return _html(pages.dlq_page(rows, since, self._frame(request[CALLER])))

    async def _letters(self, request: web.Request) -> web.StreamResponse:
        since = self._since(request)
        q = request.query
        topic, stage, reason, facility = (q.get(k, "") for k in ("topic", "stage", "reason", "facility"))
        if not (topic and stage and reason):
            raise ConfigError("topic, stage and reason are required: follow a count on the dead-letter page")
        found = await self.backend.letters(topic, stage, reason, facility, since)
        page = pages.letters_page(topic, stage, reason, facility, since, found, self._frame(request[CALLER]))
        return _html(page)

    async def _dead_letter(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        view = await self.backend.dead_letter(request.match_info["raw_id"], self._since(request), caller.who)
        return _html(pages.dead_letter_page(view, self._frame(caller)))

    async def _redrive(self, request: web.Request) -> web.StreamResponse:
        caller, form = await self._checked_form(request)
        raw_id = request.match_info["raw_id"]
        why = form.get("why", "").strip()
        if not why:
            raise ConfigError("say why (a ticket id): it is recorded in the audit trail with the re-drive")
        since_text = form.get("since", "").strip()
        since = dlq.parse_time(since_text, "since") if since_text else self._since(request)
        started = datetime.now(UTC)
        lines = await self.backend.redrive(raw_id, since, why, form.get("force") == "yes", caller.who)
        # The re-driven copy is a new record from now on: a trace from just before it is cheap.
        trace_since = started - timedelta(minutes=5)
        return _html(pages.redriven_page(raw_id, since, trace_since, lines, self._frame(caller)))

    async def _trace(self, request: web.Request) -> web.StreamResponse:
        caller = request[CALLER]
        q, sender = request.query.get("q", "").strip(), request.query.get("sender", "").strip()
        since_text = request.query.get("since", "").strip()
        since = dlq.parse_time(since_text, "since") if since_text else None
        frame = self._frame(caller)
        if not q:
            return _html(pages.trace_page("", sender, since_text, frame))
        try:
            result = await self.backend.trace(q, sender or None, since, caller.who)
        except Unavailable as exc:
            return _html(pages.trace_page(q, sender, since_text, frame, problem=f"{exc}: try again"), 503)
        except AffluentError as exc:
            return _html(pages.trace_page(q, sender, since_text, frame, problem=str(exc)), 400)
        return _html(pages.trace_page(q, sender, since_text, frame, result))


async def serve(settings: Settings, out: Callable[[str], None]) -> None:
    """Run the console until SIGINT/SIGTERM."""
    from affluent.core.lifecycle import wait_for_signal

    console = Console(settings)
    port = await console.start()
    scheme = "https" if console.tls else "http"
    host = settings.console.host
    out(f"affluent console: {scheme}://{f'[{host}]' if ':' in host else host}:{port}/ (Ctrl-C stops it)")
    try:
        await wait_for_signal()
    finally:
        await console.stop()
