"""The console without a broker: who gets in (bearer, client certificate, login form and its cookie),
which forms are genuine (CSRF), where it may listen, and that every mistake is a one-line page.

The pages are served by the real aiohttp app over a fake backend; the browser, the real backend and
Kafka are in tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from affluent.cli import main
from affluent.console import pages
from affluent.console.auth import Caller, Sessions, identify
from affluent.console.data import (
    KafkaBackend,
    NotFound,
    RedriveRefused,
    children,
    metrics_url,
    supervisor_url,
)
from affluent.console.rates import Snapshot, rates, totals
from affluent.console.server import Console, check_exposure
from affluent.core.auth import StaticTokens
from affluent.core.errors import ConfigError, KafkaUnavailable, RegistryUnavailable
from affluent.core.settings import ConsoleSettings, KafkaSettings, RunSettings, Settings
from affluent.dlq import Row
from schemas.audit import UNKNOWN_CALLER, AuditReason
from tests.support.certs import TestPki

TOKEN = "console-unit-token-not-a-secret"
WHO = "ops-unit"
RAW_ID = "ab" * 32
WHEN = datetime(2026, 11, 24, 8, 15, tzinfo=UTC)
HTML = {"Accept": "text/html"}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki(tmp_path / "pki")


@dataclass
class FakeBackend:
    """What the server asks of the world, answered from memory; ``fail`` makes every call raise."""

    fail: BaseException | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def health(self) -> pages.Health:
        self._maybe_fail()
        return pages.Health(
            "http://127.0.0.1:9460/health", None, True, [pages.Child("mllp", "door", 42, True, 1, None)]
        )

    async def dead_letter_rows(self, since: datetime) -> list[Row]:
        self._maybe_fail()
        return [Row("dlq.normalize", "normalize", "unknown_device", "GW-1", 3, WHEN, WHEN)]

    async def letters(
        self, topic: str, stage: str, reason: str, facility: str, since: datetime
    ) -> list[pages.Letter]:
        self._maybe_fail()
        return [pages.Letter(RAW_ID, WHEN, "$.deviceId")]

    async def dead_letter(self, raw_id: str, since: datetime, who: str) -> pages.DeadLetter:
        self._maybe_fail()
        self.calls.append(("dead_letter", (raw_id, who)))
        record = [
            "reason               unknown_device",
            "payload:",
            '{"deviceId": "<script>alert(1)</script>"}',
        ]
        return pages.DeadLetter(RAW_ID, since, since, [record], verdicts=["x: maps now (3 events)"])

    async def redrive(self, raw_id: str, since: datetime, why: str, force: bool, who: str) -> list[str]:
        self._maybe_fail()
        self.calls.append(("redrive", (raw_id, why, force, who)))
        return ["re-driven: 1 raw record(s)"]

    async def refused(self, who: str, raw_id: str, reason: AuditReason) -> None:
        self.calls.append(("refused", (who, raw_id, reason)))

    async def trace(self, q: str, sender: str | None, since: datetime | None, who: str) -> pages.Traced:
        self._maybe_fail()
        self.calls.append(("trace", (q, sender, since, who)))
        return pages.Traced(["trace of id abab", "arrived: yes"], True)


def console_settings(**console: Any) -> Settings:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return Settings(console=ConsoleSettings(token_sha256={WHO: digest}, **console))


CONSOLES: dict[int, Console] = {}


async def client(backend: FakeBackend, settings: Settings | None = None) -> TestClient[Any, Any]:
    console = Console(settings or console_settings(), backend)
    test_client: TestClient[Any, Any] = TestClient(TestServer(console.app()))
    await test_client.start_server()
    CONSOLES[id(test_client)] = console
    return test_client


def bearer_csrf(c: TestClient[Any, Any]) -> str:
    """The CSRF token of the bearer caller on that client's console (a per-process secret)."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    return CONSOLES[id(c)].sessions.csrf(Caller(WHO, f"bearer:{digest}", "bearer"))


def csrf_of(body: str) -> str:
    marker = 'name="csrf" value="'
    start = body.index(marker) + len(marker)
    return body[start : body.index('"', start)]


# --- where it may listen ------------------------------------------------------------------------------


def test_beyond_loopback_the_console_needs_tls(pki: TestPki, caplog) -> None:
    named = {"token_sha256": {WHO: "0" * 64}}
    check_exposure(ConsoleSettings(**named))  # loopback by default
    with pytest.raises(ConfigError) as refused:
        check_exposure(ConsoleSettings(host="0.0.0.0", **named))
    text = str(refused.value)
    assert "AFFLUENT_CONSOLE__TLS_CERTIFICATE" in text and "AFFLUENT_CONSOLE__ALLOW_PLAINTEXT" in text
    assert "\n" not in text
    server = pki.issue("console.test", server=True)
    check_exposure(ConsoleSettings(host="0.0.0.0", tls_certificate=server.cert, tls_key=server.key, **named))
    with caplog.at_level(logging.WARNING):
        check_exposure(ConsoleSettings(host="0.0.0.0", allow_plaintext=True, **named))
    assert "AFFLUENT_CONSOLE__ALLOW_PLAINTEXT" in caplog.records[-1].getMessage()


def test_the_console_refuses_to_start_with_nobody_to_let_in() -> None:
    with pytest.raises(ConfigError, match="AFFLUENT_CONSOLE__TOKEN_SHA256"):
        check_exposure(ConsoleSettings())
    with pytest.raises(ConfigError, match="hex SHA-256 digest"):
        check_exposure(ConsoleSettings(token_sha256={WHO: "not-a-digest"}))


def test_console_settings_hang_together(pki: TestPki) -> None:
    server = pki.issue("console.test", server=True)
    with pytest.raises(ValueError, match="go together"):
        ConsoleSettings(tls_certificate=server.cert)
    with pytest.raises(ValueError, match="tls_client_subjects needs"):
        ConsoleSettings(tls_client_subjects=["ops.chu.example"])
    with pytest.raises(ValueError, match="tls_client_ca needs"):
        ConsoleSettings(tls_client_ca=pki.ca.cert)


def test_the_cli_refuses_an_exposed_console_in_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("AFFLUENT_CONSOLE__HOST", "0.0.0.0")
    monkeypatch.setenv("AFFLUENT_CONSOLE__PORT", "0")
    monkeypatch.setenv("AFFLUENT_CONSOLE__TOKEN_SHA256", f'{{"{WHO}": "{"0" * 64}"}}')
    assert main(["console"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("affluent: error: the console would listen on 0.0.0.0 beyond loopback")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_supervisor_url_follows_affluent_runs_settings() -> None:
    assert supervisor_url(Settings()) == "http://127.0.0.1:9460/health"
    assert supervisor_url(Settings(run=RunSettings(metrics_port=19460))) == "http://127.0.0.1:19460/health"
    assert supervisor_url(Settings(run=RunSettings(metrics_port=None))) is None
    mine = Settings(console=ConsoleSettings(supervisor_url="http://10.0.0.5:9460/health"))
    assert supervisor_url(mine) == "http://10.0.0.5:9460/health"
    # the children's /metrics are read on the supervisor's host, whatever host their URL names
    assert metrics_url("http://127.0.0.1:9465/metrics", "http://10.0.0.5:9460/health") == (
        "http://10.0.0.5:9465/metrics"
    )
    assert metrics_url("http://127.0.0.1:9465/metrics", "http://127.0.0.1:9460/health") == (
        "http://127.0.0.1:9465/metrics"
    )


# --- sessions, CSRF, who is calling ----------------------------------------------------------------------


def test_a_session_is_signed_bounded_and_ends_at_logout() -> None:
    now = [1000.0]
    sessions = Sessions(60, clock=lambda: now[0])
    cookie = sessions.open(WHO)
    caller = sessions.caller(cookie)
    assert caller is not None and caller.who == WHO and caller.how == "session"
    sid, signature = cookie.split(".")
    assert sessions.caller(f"{sid}.{'0' * len(signature)}") is None  # forged signature
    assert sessions.caller(sid) is None and sessions.caller(None) is None
    assert Sessions(60, clock=lambda: now[0]).caller(cookie) is None  # another process's secret
    now[0] += 61
    assert sessions.caller(cookie) is None  # expired
    again = sessions.open(WHO)
    sessions.close(again)
    assert sessions.caller(again) is None


def test_the_csrf_token_is_bound_to_the_credential() -> None:
    sessions = Sessions(60)
    alice, bob = Caller("alice", "session:1", "session"), Caller("alice", "session:2", "session")
    token = sessions.csrf(alice)
    assert sessions.csrf_ok(alice, token)
    assert not sessions.csrf_ok(bob, token)  # same name, other session
    assert not sessions.csrf_ok(alice, None) and not sessions.csrf_ok(alice, "")
    assert not Sessions(60).csrf_ok(alice, token)  # another process


def test_who_is_the_certificate_cn_the_token_name_or_the_session() -> None:
    tokens = StaticTokens({WHO: hashlib.sha256(TOKEN.encode()).hexdigest()})
    sessions = Sessions(60)
    cert = {"subject": ((("commonName", "ops.chu.example"),),)}
    two_cns = {"subject": ((("commonName", "ops.chu.example"),), (("commonName", "x"),))}
    allowed = ["ops.chu.example"]
    by_cert = identify(tokens, allowed, sessions, None, cert, None)
    assert by_cert == Caller("ops.chu.example", "certificate:ops.chu.example", "certificate")
    assert identify(tokens, [], sessions, None, cert, None) is None  # CN not on the list
    assert identify(tokens, allowed, sessions, None, two_cns, None) is None  # two CNs name nobody
    by_token = identify(tokens, [], sessions, f"Bearer {TOKEN}", None, None)
    assert by_token is not None and by_token.who == WHO and by_token.how == "bearer"
    assert identify(tokens, [], sessions, "Bearer wrong", None, None) is None
    cookie = sessions.open("op-2")
    by_cookie = identify(None, [], sessions, None, None, cookie)
    assert by_cookie is not None and by_cookie.who == "op-2"


# --- rates ------------------------------------------------------------------------------------------------

METRICS = """\
# TYPE affluent_normalize_records_in counter
affluent_normalize_records_in_total{protocol="hl7v2"} 100.0
affluent_normalize_records_in_total{protocol="device"} 10.0
# TYPE affluent_dlq_records counter
affluent_dlq_records_total{reason="unknown_device",stage="normalize"} 2.0
affluent_dlq_records_total{reason="no_patient",stage="normalize"} 3.0
# TYPE affluent_mllp_messages counter
affluent_mllp_messages_total{message_type="ADT^A01",outcome="stored"} 7.0
affluent_mllp_messages_total{message_type="ADT^A01",outcome="rejected"} 99.0
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 5.0
"""


def test_rates_are_counter_differences_per_channel() -> None:
    before = totals("normalize", METRICS)
    assert before == {
        ("normalize", "raw records read (hl7v2)"): 100.0,
        ("normalize", "raw records read (device)"): 10.0,
        ("normalize", "dead letters (normalize)"): 5.0,
        ("normalize", "MLLP messages stored"): 7.0,  # only the stored outcome
    }
    after = {
        **before,
        ("normalize", "raw records read (hl7v2)"): 150.0,
        ("normalize", "dead letters (normalize)"): 1.0,
    }
    found = {(r.channel, r.per_s) for r in rates(Snapshot(0.0, before), Snapshot(10.0, after))}
    assert ("raw records read (hl7v2)", 5.0) in found
    assert ("raw records read (device)", 0.0) in found
    assert ("dead letters (normalize)", 0.1) in found  # went down: restarted, 1 counted since
    assert rates(Snapshot(5.0, before), Snapshot(5.0, after)) == []


def test_the_supervisors_health_becomes_rows() -> None:
    report = {
        "ready": False,
        "children": {
            "normalize": {
                "pid": 12,
                "ready": True,
                "restarts": 2,
                "role": "worker",
                "metrics": "http://x/metrics",
            },
            "mllp": {"pid": None, "ready": False, "restarts": 0, "role": "door", "metrics": None},
        },
    }
    assert children(report) == [
        pages.Child("mllp", "door", None, False, 0, None),
        pages.Child("normalize", "worker", 12, True, 2, "http://x/metrics"),
    ]


# --- pages -------------------------------------------------------------------------------------------


def test_pages_escape_what_a_sender_sent_and_forms_carry_the_csrf_token() -> None:
    frame = pages.Frame('op"<b>', "tok&en")
    record = ["reason  bad", "payload:", '<script>alert("x")</script>']
    view = pages.DeadLetter(RAW_ID, WHEN, WHEN, [record], verdicts=["v"])
    body = pages.dead_letter_page(view, frame)
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert "op&quot;&lt;b&gt;" in body and "<b>" not in body
    assert body.count('name="csrf" value="tok&amp;en"') == 2  # the re-drive form and log out
    assert "<script" not in pages.trace_page('"><script>', "", "", frame, pages.Traced(["<i>"], False))


def test_the_dry_run_badge_says_what_a_redrive_would_do() -> None:
    frame = pages.Frame(WHO, "t")

    def badge(**verdict: Any) -> str:
        body = pages.dead_letter_page(
            pages.DeadLetter(RAW_ID, WHEN, WHEN, [], verdicts=["v"], **verdict), frame
        )
        return body.split('class="badge ', 1)[1].split("<", 1)[0]

    assert badge() == 'ok">maps now'
    assert badge(refused_again=True, refused_otherwise=True) == 'bad">would be refused again'
    assert badge(refused_otherwise=True) == 'bad">would be refused for another reason'
    problem = pages.dead_letter_page(
        pages.DeadLetter(RAW_ID, WHEN, WHEN, [], redrive_problem="keys missing"), frame
    )
    assert "keys missing" in problem and 'id="redrive"' not in problem  # no form when no verdict


# --- the server: authentication, CSRF, errors ------------------------------------------------------


async def test_a_browser_without_credentials_is_sent_to_the_login_form() -> None:
    backend = FakeBackend()
    c = await client(backend)
    try:
        r = await c.get("/dlq?since=2026-11-01", headers=HTML, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login?next=%2Fdlq%3Fsince%3D2026-11-01"
        r = await c.get("/dlq")
        assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        r = await c.get("/login?next=/dlq")
        assert r.status == 200 and 'name="token"' in await r.text()
    finally:
        await c.close()


async def test_login_sets_a_strict_httponly_session_and_logout_ends_it() -> None:
    backend = FakeBackend()
    c = await client(backend)
    try:
        r = await c.post("/login", data={"token": "wrong", "next": "/"}, allow_redirects=False)
        assert r.status == 401 and "not valid" in await r.text()
        r = await c.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/"  # never off the console
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback; over TLS it is (test below)
        r = await c.get("/", headers=HTML)
        body = await r.text()
        assert r.status == 200 and WHO in body and "mllp" in body
        assert (
            r.headers["Cache-Control"] == "no-store"
            and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        )
        r = await c.post("/logout", data={}, allow_redirects=False)
        assert r.status == 403  # no CSRF token: not from our page
        r = await c.post("/logout", data={"csrf": csrf_of(body)}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login"
        r = await c.get("/", headers=HTML, allow_redirects=False)
        assert r.status == 303
    finally:
        await c.close()


async def test_a_redrive_without_its_csrf_token_is_refused_and_recorded() -> None:
    backend = FakeBackend()
    c = await client(backend)
    try:
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data={"why": "T-1"}, headers=BEARER)
        body = await r.text()
        assert r.status == 403 and "CSRF" in body and "Traceback" not in body
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data={"why": "T-1", "csrf": "0" * 64}, headers=BEARER)
        assert r.status == 403
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data={"why": "T-1"})
        assert r.status == 401
        r = await c.post("/dlq/not-a-raw-id/redrive", data={"why": "T-1"})
        assert r.status == 401  # no such route, and no credentials: still one page, no 500
        assert [c for c in backend.calls if c[0] != "dead_letter"] == [
            ("refused", (WHO, RAW_ID, AuditReason.UNAUTHORIZED)),
            ("refused", (WHO, RAW_ID, AuditReason.UNAUTHORIZED)),
            ("refused", (UNKNOWN_CALLER, RAW_ID, AuditReason.UNAUTHORIZED)),
            ("refused", (UNKNOWN_CALLER, "", AuditReason.UNAUTHORIZED)),
        ]
    finally:
        await c.close()


async def test_a_redrive_with_its_form_is_done_as_the_caller() -> None:
    backend = FakeBackend()
    c = await client(backend)
    try:
        r = await c.get(f"/dlq/{RAW_ID}", headers=BEARER)
        page = await r.text()
        assert r.status == 200 and "maps now" in page and "&lt;script&gt;" in page
        form = {"csrf": csrf_of(page), "why": "TICKET-7", "force": "yes", "since": "2026-11-01T00:00"}
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data=form, headers=BEARER)
        assert r.status == 200 and "Re-driven" in await r.text()
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data={**form, "why": "  "}, headers=BEARER)
        assert r.status == 400 and "say why" in await r.text()
        assert backend.calls == [
            ("dead_letter", (RAW_ID, WHO)),
            ("redrive", (RAW_ID, "TICKET-7", True, WHO)),
        ]
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (KafkaUnavailable("Kafka at 127.0.0.1:1 did not answer within 1 s"), 503, "Kafka at 127.0.0.1:1"),
        (
            RegistryUnavailable("schema registry at http://x unreachable: ConnectError"),
            503,
            "schema registry",
        ),
        (ConfigError("since 'x' is not an ISO 8601 time"), 400, "not an ISO 8601 time"),
        (NotFound("no dead letter with raw id abab"), 404, "no dead letter"),
        (
            RedriveRefused("not re-driven: the stage would refuse it again", ["x: refused again"]),
            409,
            "refuse it again",
        ),
        (RuntimeError("a bug"), 500, "the console failed on this request"),
    ],
)
async def test_every_mistake_is_a_one_line_page_never_a_traceback(error, status, line) -> None:
    backend = FakeBackend(fail=error)
    c = await client(backend)
    try:
        for method, path in (("GET", "/dlq"), ("GET", f"/dlq/{RAW_ID}"), ("GET", "/")):
            if isinstance(error, RedriveRefused):
                break
            r = await c.request(method, path, headers=BEARER)
            body = await r.text()
            assert r.status == status, path
            assert line in body and "Traceback" not in body and "a bug" not in body
        r = await c.post(f"/dlq/{RAW_ID}/redrive", data={"csrf": bearer_csrf(c), "why": "T"}, headers=BEARER)
        body = await r.text()
        assert r.status == status and line in body and "Traceback" not in body
    finally:
        await c.close()


async def test_bad_input_is_answered_on_its_page() -> None:
    backend = FakeBackend()
    c = await client(backend)
    try:
        r = await c.get("/dlq?since=yesterday", headers=BEARER)
        assert r.status == 400 and "not an ISO 8601 time" in await r.text()
        r = await c.get("/dlq/letters?topic=dlq.normalize", headers=BEARER)
        assert r.status == 400 and "required" in await r.text()
        r = await c.get("/dlq/not-hex", headers=BEARER)
        assert r.status == 404 and "Traceback" not in await r.text()
        r = await c.get("/trace?q=abababab&since=2026-11-24T08:00", headers=BEARER)
        body = await r.text()
        assert r.status == 200 and "arrived" in body and "not arrived" not in body
        assert backend.calls[-1] == ("trace", ("abababab", None, datetime(2026, 11, 24, 8, tzinfo=UTC), WHO))
        r = await c.get("/trace", headers=BEARER)
        assert r.status == 200 and "arrived" not in await r.text()
    finally:
        await c.close()


async def test_trace_errors_stay_on_the_trace_page() -> None:
    for error, status in ((ConfigError("zz names no message"), 400), (KafkaUnavailable("Kafka down"), 503)):
        c = await client(FakeBackend(fail=error))
        try:
            r = await c.get("/trace?q=zz", headers=BEARER)
            body = await r.text()
            assert r.status == status and str(error) in body and 'name="q" value="zz"' in body
        finally:
            await c.close()


async def test_kafka_down_is_a_503_page_from_the_real_backend() -> None:
    settings = console_settings(kafka_wait_s=1.0).model_copy(
        update={"kafka": KafkaSettings(bootstrap_servers="127.0.0.1:1")}
    )
    console = Console(settings)
    c: TestClient[Any, Any] = TestClient(TestServer(console.app()))
    await c.start_server()
    try:
        r = await c.get("/dlq", headers=BEARER)
        body = await r.text()
        assert r.status == 503 and "Kafka at 127.0.0.1:1 did not answer" in body and "Traceback" not in body
    finally:
        await c.close()


async def test_affluent_run_unreachable_is_said_on_the_health_page() -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: nothing answers
        settings = console_settings(supervisor_url=f"http://127.0.0.1:{port}/health")
        backend = KafkaBackend(settings)
        await backend.start()
        try:
            view = await backend.health()
        finally:
            await backend.stop()
    assert view.problem == "nothing answers there"
    body = pages.health_page(view, pages.Frame(WHO, "t"))
    assert f"affluent run is not reachable at http://127.0.0.1:{port}/health" in body


async def test_a_client_certificate_on_the_list_logs_in_over_tls(pki: TestPki) -> None:
    server = pki.issue("console.test", server=True)
    ops, stranger = pki.issue("ops.chu.example"), pki.issue("stranger.example")
    settings = console_settings(
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
        tls_client_subjects=["ops.chu.example"],
    )
    console = Console(settings, FakeBackend())
    port = await console.start(port=0)
    try:

        def context(cert: Any) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
            if cert is not None:
                ctx.load_cert_chain(str(cert.cert), str(cert.key))
            return ctx

        url = f"https://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=context(ops)) as r:
                assert r.status == 200 and "ops.chu.example" in await r.text()
            async with session.get(url, ssl=context(stranger)) as r:
                assert r.status == 401  # a good certificate, but not on the list
            async with session.get(url, ssl=context(None), headers=BEARER) as r:
                assert r.status == 200 and WHO in await r.text()  # the token still works
            async with session.post(
                f"https://127.0.0.1:{port}/login",
                data={"token": TOKEN},
                ssl=context(None),
                allow_redirects=False,
            ) as r:
                cookie = r.headers["Set-Cookie"]
                assert cookie.startswith("__Host-affluent-console=") and "Secure" in cookie
    finally:
        await console.stop()
