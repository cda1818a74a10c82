"""`make demo` stays true: `affluent run` + the simulated hospital on every channel (MLLP, FHIR, device
HTTP and MQTT), and the accounting balances, in total and per channel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_accounts_for_every_acknowledged_message(live_kafka, registry):
    # Groups of this run: on a shared broker the demo's stable groups may sit far behind (others' traffic
    # since the last demo), which a fresh machine never sees.
    run = uuid.uuid4().hex[:8]
    groups = {
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": f"test-demo-normalize-{run}",
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": f"test-demo-pseudonymize-{run}",
        "AFFLUENT_STREAMS__COHORT_GROUP": f"test-demo-cohort-{run}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "affluent.cli", "demo", "--duration", "12", "--rate", "30"],
        env={**os.environ, **groups},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    sent = next(line for line in lines if line.strip().startswith("sent "))
    acknowledged = next(line for line in lines if "acknowledged by the door" in line)
    refused = next(line for line in lines if "refused by the door" in line)
    # Every message got an answer: acknowledged, or refused at once (the malformed share).
    assert (
        int(acknowledged.split()[-1]) + int(refused.split(")")[1].split()[0]) == int(sent.split()[-1]) == 360
    )
    assert int(acknowledged.split()[-1]) > 300
    assert any(" s  sent " in line for line in lines)  # the progress view
    nowhere = next(line for line in lines if "acknowledged but found nowhere" in line)
    assert nowhere.split()[-1] == "0"
    assert any(line.strip().startswith("canonical.observation") for line in lines)
    assert any(line.strip().startswith("national.hdh.observation.v1") for line in lines)
    assert any(line.strip().startswith("opposition drops, hdh") for line in lines)
    national_missing = next(line for line in lines if "national records expected but missing" in line)
    assert national_missing.split()[-1] == "0"
    assert any("affluent tail national.hdh.observation.v1" in line for line in lines)
    stopped = next(line for line in lines if "affluent run: stopped " in line)
    for component in ("mllp", "fhir", "devices", "normalize", "cohort", "pseudonymize"):
        assert f"{component} (0)" in stopped, stopped
    # INCa takes cohort members only: the patients without a cancer stay held, counted
    assert any(line.strip().startswith("in no cohort of inca") for line in lines)
    # One accounting line per channel, each balanced (nothing missing).
    channels = {
        line.split()[0]: line.split() for line in lines if line.startswith("  ") and len(line.split()) == 9
    }
    for channel in ("mllp", "fhir", "devices_http", "devices_mqtt"):
        assert int(channels[channel][1]) > 0 and channels[channel][-1] == "0", channels.get(channel)
    # The malformed share is drawn at random (2 %): a 360-message run may send no HL7 message that the
    # door stores and normalization dead-letters; when it does, the accounting names dlq.normalize.
    if int(channels["mllp"][5]) > 0:
        assert any(line.strip().startswith("dlq.normalize") for line in lines)
    assert "Traceback" not in result.stderr
