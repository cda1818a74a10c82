"""What the console's browser tests share: ``affluent run`` as a supervised subprocess, waiting for it,
restarting one of its children, and reading pages in Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.settings import Settings
from schemas.catalog import CANONICAL_TOPICS, NATIONAL_TOPICS
from streams.normalize.worker import RAW_TOPICS
from streams.pseudonymize.worker import KEY_FILE_ENV
from tests.support.cdp import Page
from tests.support.pipeline import KEY_FILE, ends, free_port, pseudonymize_sources, start_group_at

SCREENSHOTS = os.environ.get("AFFLUENT_CONSOLE_SCREENSHOTS")
WAIT_S = 120.0


def health_of(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


@contextmanager
def supervised_workers(
    tmp_path: Path,
    run: str,
    only: tuple[str, ...] = ("normalize", "pseudonymize"),
    extra_env: dict[str, str] | None = None,
) -> Iterator[int]:
    """``affluent run --only <only>`` (the workers in fresh groups at the end of their inputs); yields
    the supervisor's port once every child is ready."""
    norm_group, pseudo_group = f"it-console-normalize-{run}", f"it-console-pseudonymize-{run}"
    kafka = Settings().kafka
    ensure_topics(kafka, [TopicSpec(t) for t in (*RAW_TOPICS, *CANONICAL_TOPICS, *NATIONAL_TOPICS)])
    start_group_at(kafka, norm_group, ends(kafka, list(RAW_TOPICS)))
    start_group_at(kafka, pseudo_group, ends(kafka, pseudonymize_sources(kafka)))
    run_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY__")}
    env.update(
        {
            KEY_FILE_ENV: str(KEY_FILE),
            "AFFLUENT_RUN__METRICS_PORT": str(run_port),
            "AFFLUENT_RUN__LOG_DIR": str(tmp_path / "run"),
            "AFFLUENT_RUN__RESTART_BACKOFF_MAX_S": "1",
            "AFFLUENT_STREAMS__NORMALIZE_GROUP": norm_group,
            "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": pseudo_group,
            "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
            "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(free_port()),
            **(extra_env or {}),
        }
    )
    with (tmp_path / "run.out").open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "affluent.cli", "run", "--only", ",".join(only)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for("affluent run ready", lambda: (health_of(run_port) or {}).get("ready"))
            yield run_port
        finally:
            supervisor.send_signal(signal.SIGTERM)
            try:
                supervisor.wait(60)
            except subprocess.TimeoutExpired:
                supervisor.kill()
                supervisor.wait(10)


def restart(run_port: int, component: str = "normalize") -> None:
    """SIGTERM one child (it commits what it did), and wait for the supervisor's new one: a fresh
    worker reads the device registry and its templates before it maps anything."""
    health = health_of(run_port)
    assert health is not None
    old = health["children"][component]["pid"]
    os.kill(old, signal.SIGTERM)
    wait_for(
        f"{component} restarted",
        lambda: (
            (h := health_of(run_port)) and h["ready"] and h["children"][component]["pid"] not in (None, old)
        ),
    )


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    """Every page is screenshotted (the PNG is checked); kept under $AFFLUENT_CONSOLE_SCREENSHOTS."""
    target = Path(SCREENSHOTS) / name if SCREENSHOTS else tmp_path / name
    await page.screenshot(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def table(page: Page, index: int = 0) -> list[list[str]]:
    """The cells of the page's ``index``-th table, row by row."""
    rows = f"document.querySelectorAll('table')[{index}].rows"
    return list(await page.evaluate(f"[...{rows}].map(r => [...r.cells].map(c => c.innerText.trim()))"))
