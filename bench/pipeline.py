"""The whole pipeline of one box for the end-to-end suites: ``affluent run`` as a child process.

Started the way the demo starts it (free ports, the local demo keys) but in consumer groups of its own,
positioned at the topics' current ends, so that the figures measure this run's traffic only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affluent.core.settings import Settings
from affluent.local.procs import stop_run
from affluent.sim.demo import (
    demo_keys,
    prepare_groups,
    run_environment,
    run_health,
    start_run,
    wait_ready,
)


@dataclass(frozen=True, slots=True)
class Pipeline:
    process: subprocess.Popen[str]
    mllp_port: int
    run_port: int
    env: dict[str, str]

    def children(self) -> dict[str, Any]:
        """name -> the supervisor's status of that child (pid, ready, restarts, metrics URL)."""
        health = run_health(self.run_port) or {}
        children: dict[str, Any] = health.get("children", {})
        return children


@contextlib.contextmanager
def running_pipeline(
    settings: Settings, log: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Pipeline]:
    """``extra_env``: more settings for the children (e.g. the FHIR and device doors' tokens)."""
    key_file = Path(os.environ.get("AFFLUENT_PSEUDO_KEY_FILE") or demo_keys(settings))
    env, mllp_port, run_port = run_environment(settings, key_file)
    run = uuid.uuid4().hex[:8]
    env["AFFLUENT_STREAMS__NORMALIZE_GROUP"] = f"bench-normalize-{run}"
    env["AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP"] = f"bench-pseudonymize-{run}"
    env["AFFLUENT_RUN__LOG_DIR"] = str(log)
    env |= extra_env or {}
    prepare_groups(settings, env)
    process = start_run(env, None, subprocess.DEVNULL)
    try:
        wait_ready(process, run_port, 180)
        yield Pipeline(process, mllp_port, run_port, env)
    finally:
        stop_run(process, 90)
