"""``affluent run``: the doors and stream workers of one box as one supervised process group.

Each component (see :mod:`affluent.components`) runs as its own child process, in its own session so
that a Ctrl-C at the terminal reaches only the supervisor, which then stops the children in order:
doors first (stop accepting, drain, flush), workers last (each finishes and commits its batch in hand),
each with SIGTERM and, past ``run.stop_timeout_s``, SIGKILL. A child that dies on its own is restarted with an
exponential back-off, and counted (``affluent_run_restarts_total``) — unless it ended with exit code 2
(``EXIT_CONFIG``: a setting, argument or file is wrong), which no restart can fix: then the supervisor
stops every child at once and ends with that child's last error line and exit code 2. The
supervisor's /health lists every child's pid, state and restarts, which is what a fault test needs to
SIGKILL one and watch it come back. Should the supervisor itself be killed, Linux sends its children
SIGTERM (PDEATHSIG), so no orphan keeps a port or a consumer group.

Children's output goes to ``<log_dir>/<name>.log``; they log at WARNING by default, and affluent's log
texts carry no message content (design §6).

Before any child starts, the supervisor runs every selected door's own start-up check (a door beyond
loopback without TLS, a key file others can read): a refusal is one sentence and a non-zero exit, not a
child restarted forever. Pseudonymization keys reach only the children that use them, and never through
the environment when they are given as a file (a variable is inherited by every process below, and is
readable wherever the environment is: ``/proc/<pid>/environ``, crash reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from affluent.components import Component, start_checks
from affluent.core.errors import EXIT_CONFIG, ConfigError
from affluent.core.settings import RunSettings, Settings
from affluent.core.telemetry import TelemetryServer
from affluent.core.tls import check_key_file

log = logging.getLogger(__name__)

Out = Callable[[str], None]
PROBE_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1
KEY_FILE_VARIABLE = "AFFLUENT_PSEUDO_KEY_FILE"
KEY_VARIABLE_PREFIX = "AFFLUENT_PSEUDO_KEY__"


def backoff(failures: int, cap_s: float, base_s: float = 0.5) -> float:
    """Seconds to wait before restarting a child that failed `failures` times in a row (≥ 1)."""
    return float(min(cap_s, base_s * 2 ** max(0, failures - 1)))


def child_argv(component: Component) -> list[str]:
    return [sys.executable, "-m", "affluent.cli", *component.argv]


def _is_key_variable(name: str) -> bool:
    return name == KEY_FILE_VARIABLE or name.startswith(KEY_VARIABLE_PREFIX)


def child_environment(component: Component, environ: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment, without the pseudonymization keys unless the child uses them."""
    env = {k: v for k, v in environ.items() if component.needs_keys or not _is_key_variable(k)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def preflight(settings: Settings, components: Sequence[Component], environ: Mapping[str, str]) -> None:
    """Every refusal a child would make at start, made once, before anything starts."""
    if any(c.needs_keys for c in components):
        variables = sorted(name for name in environ if name.startswith(KEY_VARIABLE_PREFIX))
        key_file = environ.get(KEY_FILE_VARIABLE)
        if key_file and variables:
            raise ConfigError(
                f"pseudonymization keys are given both by {KEY_FILE_VARIABLE} and by {', '.join(variables)}: "
                "affluent run hands keys to its children by file only, so unset the variables"
            )
        if key_file:
            check_key_file(Path(key_file), KEY_FILE_VARIABLE)
    for component in components:
        start_checks(component, settings)


ERROR_PREFIX = "affluent: error: "


def last_error(log_path: Path, limit: int = 64 * 1024) -> str | None:
    """The last ``affluent: error:`` line a child wrote to its log (read from the end of the file)."""
    try:
        with log_path.open("rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - limit))
            tail = log_file.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line for line in tail.splitlines() if line.startswith(ERROR_PREFIX)]
    return lines[-1].removeprefix(ERROR_PREFIX).strip() if lines else None


def log_dir(settings: Settings) -> Path:
    return settings.run.log_dir or settings.stack.state_dir / "run"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(slots=True)
class RunMetrics:
    restarts: Counter
    up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RunMetrics:
        return cls(
            Counter(
                "affluent_run_restarts",
                "Children restarted by the supervisor after they stopped on their own",
                ["component"],
                registry=registry,
            ),
            Gauge(
                "affluent_run_child_up",
                "1 when the child answers its readiness probe",
                ["component"],
                registry=registry,
            ),
        )


class Child:
    """One component's process, restarted whenever it ends while the supervisor is not stopping."""

    def __init__(
        self,
        component: Component,
        settings: Settings,
        metrics: RunMetrics,
        logs: Path,
        on_refusal: Callable[[Child], None] | None = None,
    ) -> None:
        self.component = component
        self.on_refusal = on_refusal
        self.refused: str | None = None  # the child's last error line, when it ended with EXIT_CONFIG
        self.name = component.name
        self.run_settings: RunSettings = settings.run
        self.port = component.metrics_port(settings)
        self.metrics = metrics
        self.log_path = logs / f"{component.name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.ready = False
        self.stopping = False
        self._log: IO[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        metrics.restarts.labels(self.name)
        metrics.up.labels(self.name).set(0)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    async def start(self) -> None:
        self.process = await self._spawn()
        self._watch = asyncio.create_task(self._keep_running(self.process), name=f"run-{self.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(
            f"--- affluent run: starting {self.name} at {time.strftime('%FT%TZ', time.gmtime())}\n".encode()
        )
        self._log.flush()
        return await asyncio.create_subprocess_exec(
            *child_argv(self.component),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=child_environment(self.component, os.environ),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    async def _keep_running(self, first: asyncio.subprocess.Process) -> None:
        failures = 0
        process = first
        while True:
            started = time.monotonic()
            code = await process.wait()
            self.ready = False
            self.metrics.up.labels(self.name).set(0)
            if self.stopping:
                return
            if code == EXIT_CONFIG:
                # A configuration error: a restart would fail the same way, forever.
                self.refused = last_error(self.log_path) or f"{self.name} ended with exit code {code}"
                log.info("%s refused to run (exit code %s): %s", self.name, code, self.refused)
                if self.on_refusal is not None:
                    self.on_refusal(self)
                return
            failures = 1 if time.monotonic() - started >= self.run_settings.stable_after_s else failures + 1
            delay = backoff(failures, self.run_settings.restart_backoff_max_s)
            log.warning("%s ended with code %s; restarting in %.1f s", self.name, code, delay)
            self.restarts += 1
            self.metrics.restarts.labels(self.name).inc()
            await asyncio.sleep(delay)
            if self.stopping:
                return
            process = self.process = await self._spawn()

    async def probe(self, session: aiohttp.ClientSession) -> bool:
        if self.pid is None:
            ok = False
        elif self.port is None:
            ok = True
        else:
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/ready") as response:
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
        self.ready = ok
        self.metrics.up.labels(self.name).set(1 if ok else 0)
        return ok

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the timeout; returns the exit code (None if it never ran)."""
        self.stopping = True
        process = self.process
        code: int | None = None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                code = await asyncio.wait_for(process.wait(), self.run_settings.stop_timeout_s)
            except TimeoutError:
                log.warning("%s did not stop in %.0f s: killed", self.name, self.run_settings.stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                code = await process.wait()
        elif process is not None:
            code = process.returncode
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self.metrics.up.labels(self.name).set(0)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def status(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "ready": self.ready,
            "restarts": self.restarts,
            "role": self.component.role,
            "metrics": f"http://127.0.0.1:{self.port}/metrics" if self.port is not None else None,
            "log": str(self.log_path),
        }


class Supervisor:
    def __init__(
        self, settings: Settings, components: Sequence[Component], registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = RunMetrics.create(self.registry)
        logs = log_dir(settings)
        logs.mkdir(parents=True, exist_ok=True)
        self.refused = asyncio.Event()
        self.children = [Child(c, settings, self.metrics, logs, self._refusal) for c in components]
        self.telemetry = TelemetryServer(self.registry, ready=self._all_ready, health=self.health)
        self._prober: asyncio.Task[None] | None = None

    def _refusal(self, child: Child) -> None:
        self.refused.set()

    @property
    def refusal(self) -> Child | None:
        """The first child that ended with a configuration error, if any."""
        return next((c for c in self.children if c.refused is not None), None)

    async def _all_ready(self) -> bool:
        return all(child.ready for child in self.children)

    def health(self) -> dict[str, object]:
        return {
            "ready": all(child.ready for child in self.children),
            "children": {child.name: child.status() for child in self.children},
        }

    async def start(self) -> int | None:
        """Start every child and the supervisor's own telemetry; returns its port (None when off)."""
        port: int | None = None
        if self.settings.run.metrics_port is not None:
            port = await self.telemetry.start(self.settings.run.metrics_host, self.settings.run.metrics_port)
        for child in self.children:
            await child.start()
        self._prober = asyncio.create_task(self._probe_forever(), name="run-probe")
        return port

    async def _probe_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(child.probe(session) for child in self.children))
                await asyncio.sleep(PROBE_INTERVAL_S)

    async def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(child.ready for child in self.children):
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self) -> dict[str, int | None]:
        """Doors first, then workers, each group stopped together; then the supervisor's telemetry."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        codes: dict[str, int | None] = {}
        for role in ("door", "worker"):
            group = [c for c in self.children if c.component.role == role]
            for child, code in zip(group, await asyncio.gather(*(c.stop() for c in group)), strict=True):
                codes[child.name] = code
        await self.telemetry.stop()
        return codes


async def supervise(settings: Settings, components: Sequence[Component], out: Out) -> int:
    """Run until SIGINT/SIGTERM, then stop cleanly; 0 when every child stopped on its own terms."""
    preflight(settings, components, os.environ)
    supervisor = Supervisor(settings, components)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = await supervisor.start()
    for child in supervisor.children:
        out(f"affluent run: {child.name:<13} pid {child.pid or '-':<8} log {child.log_path}")
    if port is not None:
        out(f"affluent run: supervisor http://{settings.run.metrics_host}:{port}/health and /metrics")
    ready = asyncio.create_task(supervisor.wait_ready(3600 * 24))
    stopping = asyncio.create_task(stop.wait())
    refused = asyncio.create_task(supervisor.refused.wait())
    await asyncio.wait({ready, stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.result():
        out(f"affluent run: {len(supervisor.children)} component(s) ready")
        await asyncio.wait({stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
    for task in (ready, stopping, refused):
        task.cancel()
    failed = supervisor.refusal
    if failed is not None:
        out(f"affluent run: {failed.name} refused to run (exit code {EXIT_CONFIG}): {failed.refused}")
    out("affluent run: stopping (doors first, then workers)")
    codes = await supervisor.stop()
    out("affluent run: stopped " + ", ".join(f"{name} ({code})" for name, code in codes.items()))
    if failed is not None:
        raise ConfigError(f"{failed.name}: {failed.refused} (log: {failed.log_path})")
    # A child ends with 0 on a clean stop, or -15 when SIGTERM came before its own handler was set.
    return 0 if all(code in (0, None, -signal.SIGTERM) for code in codes.values()) else 1
