"""`make demo` stays true: the main job runs end to end and its accounting balances."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_accounts_for_every_acknowledged_message(live_kafka, registry):
    result = subprocess.run(
        [sys.executable, "-m", "affluent.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    sent = next(line for line in lines if line.startswith("Hospital sent"))
    assert "('AA', 200)" in sent
    acknowledged = next(line for line in lines if "acknowledged by the door" in line)
    assert acknowledged.split()[-1] == "200"
    nowhere = next(line for line in lines if "acknowledged but found nowhere" in line)
    assert nowhere.split()[-1] == "0"
    assert any(line.strip().startswith("canonical.observation") for line in lines)
    assert any(line.strip().startswith("national.hdh.observation.v1") for line in lines)
    assert any(line.strip().startswith("opposition drops, hdh") for line in lines)
    national_missing = next(line for line in lines if "national records expected but missing" in line)
    assert national_missing.split()[-1] == "0"
    assert "Traceback" not in result.stderr
