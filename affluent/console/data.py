"""What the console's pages show, fetched: the supervisor's /health, the components' counters, the dead
letters, a re-drive, a trace.

Everything here is a call into the commands' own libraries (:mod:`affluent.dlq`, ``affluent.trace``,
:mod:`schemas.audit_log`), so a page and its command can never disagree; the console adds only the
caller's name and the HTTP channel to what the audit trail records. Those libraries block on Kafka, so
each call runs in a worker thread, after a short check that Kafka answers at all: a page waits
``AFFLUENT_CONSOLE__KAFKA_WAIT_S`` for a broker that is down, not the commands' patient 10 to 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from affluent import dlq
from affluent.console.pages import Child, DeadLetter, Health, Letter, Traced
from affluent.console.rates import Snapshot, rates, totals
from affluent.core.errors import AffluentError, ConfigError, Unavailable
from affluent.core.kafka import wait_for_kafka
from affluent.core.settings import Settings
from affluent.core.tls import is_loopback
from schemas.audit import (
    AuditAction,
    AuditChannel,
    AuditOutcome,
    AuditReason,
    InvalidAuditEntry,
    audit_entry,
)
from schemas.audit_log import record_now

log = logging.getLogger(__name__)
T = TypeVar("T")
HTTP_TIMEOUT_S = 2.0
TRACE_MARGIN = timedelta(hours=1)  # a raw record waits this long at most for normalize, as a rule
_RAW_ID = re.compile(r"[0-9a-f]{64}")


class NotFound(ConfigError):
    """What a page asked for is not there (answered 404)."""


class RedriveRefused(ConfigError):
    """The re-drive was not done; ``lines`` is what its dry run said."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


class Backend(Protocol):
    """What the server asks of the world; tests give it a fake, the console a :class:`KafkaBackend`."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def health(self) -> Health: ...
    async def dead_letter_rows(self, since: datetime) -> list[dlq.Row]: ...
    async def letters(
        self, topic: str, stage: str, reason: str, facility: str, since: datetime
    ) -> list[Letter]: ...
    async def dead_letter(self, raw_id: str, since: datetime, who: str) -> DeadLetter: ...
    async def redrive(self, raw_id: str, since: datetime, why: str, force: bool, who: str) -> list[str]: ...
    async def refused(self, who: str, raw_id: str, reason: AuditReason) -> None: ...
    async def trace(self, q: str, sender: str | None, since: datetime | None, who: str) -> Traced: ...


def supervisor_url(settings: Settings) -> str | None:
    """The supervisor's /health: the console's setting, else where ``affluent run`` serves it."""
    if settings.console.supervisor_url:
        return settings.console.supervisor_url
    if settings.run.metrics_port is None:
        return None
    host = settings.run.metrics_host
    host = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.run.metrics_port}/health"


def metrics_url(child_url: str, supervisor: str) -> str:
    """A child's /metrics as the supervisor names it (``http://127.0.0.1:<port>/metrics``), on the
    supervisor's host: the children listen beside it, and the console follows no other host's URL."""
    child, boss = urlsplit(child_url), urlsplit(supervisor)
    host = boss.hostname or "127.0.0.1"
    if is_loopback(host):
        host = child.hostname or host
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit(("http", f"{netloc}:{child.port}", "/metrics", "", ""))


def children(report: dict[str, Any]) -> list[Child]:
    """The supervisor's /health (``affluent/run.py`` ``Supervisor.health``) as rows."""
    out = []
    for name, status in sorted((report.get("children") or {}).items()):
        status = status if isinstance(status, dict) else {}
        pid = status.get("pid")
        out.append(
            Child(
                str(name),
                str(status.get("role") or "?"),
                pid if isinstance(pid, int) else None,
                bool(status.get("ready")),
                int(status.get("restarts") or 0),
                str(status["metrics"]) if status.get("metrics") else None,
            )
        )
    return out


class KafkaBackend:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.console = settings.console
        self.url = supervisor_url(settings)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._snapshots: list[Snapshot] = []
        self._next_at = clock()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        self._sampler = asyncio.create_task(self._sample_forever(), name="console-rates")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._session is not None:
            await self._session.close()

    # --- health and rates ---------------------------------------------------------------------------

    async def _get(self, url: str) -> str:
        assert self._session is not None, "start() first"
        async with self._session.get(url) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            return await response.text()

    async def _report(self) -> dict[str, Any]:
        if self.url is None:
            raise ValueError("no supervisor URL (AFFLUENT_RUN__METRICS_PORT is unset)")
        try:
            report = json.loads(await self._get(self.url))
        except json.JSONDecodeError:
            raise ValueError("its /health is not JSON: is that affluent run's supervisor?") from None
        if not isinstance(report, dict):
            raise ValueError("its /health is not a JSON object")
        return report

    async def _sample_forever(self) -> None:
        while True:
            self._next_at = self._clock() + self.console.rate_interval_s
            try:
                snapshot = await self._snapshot()
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.debug("rates: no snapshot (%s)", exc)
                self._snapshots = []  # rates across an outage would be an average, not a rate
            else:
                self._snapshots = [*self._snapshots[-1:], snapshot]
            await asyncio.sleep(max(0.0, self._next_at - self._clock()))

    async def _snapshot(self) -> Snapshot:
        report = await self._report()
        at = self._clock()
        found: dict[tuple[str, str], float] = {}
        for child in children(report):
            if child.metrics is None or child.pid is None or self.url is None:
                continue
            try:
                found.update(totals(child.name, await self._get(metrics_url(child.metrics, self.url))))
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.debug("rates: %s's metrics unread (%s)", child.name, exc)
        return Snapshot(at, found)

    async def health(self) -> Health:
        url = self.url or "(none)"
        try:
            report = await self._report()
        except (aiohttp.ClientConnectionError, OSError):
            return Health(url, problem="nothing answers there")
        except TimeoutError:
            return Health(url, problem=f"no answer within {HTTP_TIMEOUT_S:g} s")
        except aiohttp.ClientError as exc:
            return Health(url, problem=f"{type(exc).__name__}")
        except ValueError as exc:
            return Health(url, problem=str(exc))
        view = Health(url, None, bool(report.get("ready")), children(report))
        next_in = max(0.0, self._next_at - self._clock())
        if len(self._snapshots) < 2:
            return Health(view.supervisor, None, view.ready, view.children, next_in_s=next_in)
        before, after = self._snapshots
        return Health(
            view.supervisor, None, view.ready, view.children, rates(before, after), after.at - before.at
        )

    # --- dead letters, re-drive, trace ----------------------------------------------------------------

    async def _blocking(self, call: Callable[[], T]) -> T:
        """``call`` in a thread, once Kafka answered a metadata request within the console's wait."""

        def checked() -> T:
            wait_for_kafka(self.settings.kafka, self.console.kafka_wait_s)
            return call()

        return await asyncio.to_thread(checked)

    async def dead_letter_rows(self, since: datetime) -> list[dlq.Row]:
        wait = self.console.kafka_wait_s
        return await self._blocking(
            lambda: dlq.summarize(dlq.read(self.settings, dlq.DLQ_TOPICS, since, None, wait))
        )

    async def letters(
        self, topic: str, stage: str, reason: str, facility: str, since: datetime
    ) -> list[Letter]:
        if topic not in dlq.DLQ_TOPICS:
            raise NotFound(f"{topic[:60]!r} is not a dead-letter topic ({', '.join(dlq.DLQ_TOPICS)})")
        records = await self._blocking(
            lambda: dlq.read(self.settings, [topic], since, None, self.console.kafka_wait_s)
        )
        chosen = [
            r
            for _, r in records
            if str(r["stage"]) == stage
            and str(r["reason_code"]) == reason
            and str(r["source"]["facility"]) == facility
        ]
        return [
            Letter(r.get("raw_id"), r["failed_at"], r.get("location"))
            for r in sorted(chosen, key=lambda r: r["failed_at"], reverse=True)
        ]

    async def dead_letter(self, raw_id: str, since: datetime, who: str) -> DeadLetter:
        """Its dead letters, with the re-drive dry run. The payloads identify patients: the read is
        in the audit trail first, and nothing is read when the entry cannot be written."""
        wait = self.console.kafka_wait_s

        def read() -> DeadLetter:
            entry = audit_entry(AuditAction.TOPIC_READ, who, AuditChannel.HTTP, dlq.DLQ_TOPICS)
            record_now(self.settings, entry, wait_s=wait)
            found = [
                (t, r)
                for t, r in dlq.read(self.settings, dlq.DLQ_TOPICS, since, None, wait)
                if str(r.get("raw_id") or "").startswith(raw_id)
            ]
            if not found:
                raise NotFound(
                    f"no dead letter with raw id {raw_id} since {since:%Y-%m-%d %H:%M} UTC: "
                    "check the id on the dead-letter list, or ask for an earlier 'since'"
                )
            ids = sorted({str(r["raw_id"]) for _, r in found})
            if len(ids) > 1:
                raise ConfigError(f"raw id {raw_id} names {len(ids)} messages: give more of it")
            lines: list[str] = []
            shown = [dlq.render_record(t, r) for t, r in found]
            # The raw record is older than its first dead letter: trace from a little before it.
            trace_since = min(r["failed_at"] for _, r in found) - TRACE_MARGIN
            try:
                verdicts = dlq.redrive_cmd(
                    self.settings, ids[0], since, "dry run", dry_run=True, out=lines.append, who=who
                )
            except ConfigError as exc:
                return DeadLetter(ids[0], since, trace_since, shown, redrive_problem=str(exc))
            return DeadLetter(
                ids[0],
                since,
                trace_since,
                shown,
                verdicts=lines,
                refused_again=any(v.refused_again for v in verdicts),
                refused_otherwise=any(v.reasons_now for v in verdicts),
            )

        return await self._blocking(read)

    async def redrive(self, raw_id: str, since: datetime, why: str, force: bool, who: str) -> list[str]:
        lines: list[str] = []

        def send() -> list[str]:
            try:
                dlq.redrive_cmd(
                    self.settings,
                    raw_id,
                    since,
                    why,
                    force=force,
                    out=lines.append,
                    who=who,
                    channel=AuditChannel.HTTP,
                )
            except ConfigError as exc:
                raise RedriveRefused(str(exc), lines) from None
            return lines

        return await self._blocking(send)

    async def refused(self, who: str, raw_id: str, reason: AuditReason) -> None:
        """A re-drive refused before it was tried (no CSRF token, no credentials): recorded, best effort
        (the refusal stands whether or not Kafka takes its entry)."""
        targets = [raw_id] if _RAW_ID.fullmatch(raw_id) else []
        try:
            entry = audit_entry(
                AuditAction.REDRIVE,
                who,
                AuditChannel.HTTP,
                targets,
                outcome=AuditOutcome.REFUSED,
                reason=reason,
            )
            await self._blocking(lambda: record_now(self.settings, entry, wait_s=self.console.kafka_wait_s))
        except (AffluentError, InvalidAuditEntry) as exc:
            log.warning("refused re-drive not recorded in the audit trail: %s", exc)

    async def trace(self, q: str, sender: str | None, since: datetime | None, who: str) -> Traced:
        """``since`` None: trace's own default window (the last 24 hours)."""
        try:
            from affluent.trace import parse_target, trace
        except ImportError:
            raise Unavailable("trace is not part of this build of affluent (affluent/trace.py)") from None

        def run() -> Traced:
            target = parse_target(q, sender)
            result = trace(self.settings, target, since, None, who=who, channel=AuditChannel.HTTP)
            return Traced(list(result.lines()), bool(result.arrived))

        return await self._blocking(run)
