"""Stopping a child process the way affluent's servers expect: SIGTERM first, so they finish and commit.

Shared by the demo, the local MQTT broker and the benchmarks; it sits on the local floor of the roof so
that ``affluent.local`` never needs the simulator above it.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_run(process: subprocess.Popen[Any], timeout_s: float) -> int:
    """SIGTERM and wait (the supervisor stops doors, then workers); SIGKILL past the timeout."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL
