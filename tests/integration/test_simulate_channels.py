"""`affluent simulate` over every channel against a real `affluent run` (MLLP, FHIR and device doors on
free ports, a real Mosquitto, the shared broker and registry): each channel's accounting balances, and
malformed messages end where they must — FHIR and device HTTP refusals as 4xx (FHIR: an
OperationOutcome) counted as refused, MQTT ones as dead letters found under their raw id."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from affluent.local.mosquitto import Mosquitto
from affluent.local.procs import stop_run
from affluent.sim.demo import (
    DEMO_COMPONENTS,
    channel_environment,
    demo_keys,
    prepare_groups,
    run_environment,
    start_run,
    wait_ready,
)
from affluent.sim.simulate import Plan, report_lines, simulate, traffic
from affluent.sim.synthetic import cohort

pytestmark = [pytest.mark.integration]

CHANNELS = {"mllp", "fhir", "devices_http", "devices_mqtt"}


def _seed_with_malformed_everywhere(plan: Plan) -> int:
    """A fresh seed (fresh ids: the doors' resend detection must not see an earlier run's messages)
    whose traffic has malformed messages on every channel."""
    seed = time.time_ns() % 2**31
    while True:
        messages = traffic(plan, cohort(seed, plan.patients), seed)
        if {m.channel for m in messages if m.label.startswith("malformed")} == CHANNELS:
            return seed
        seed += 1


def test_every_channel_balances_and_malformed_messages_end_where_they_must(
    live_kafka, registry, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    env, mllp_port, run_port = run_environment(settings, demo_keys(settings))
    extra, fhir, devices = channel_environment(env, broker.port)
    run = uuid.uuid4().hex[:8]
    env |= extra | {
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": f"test-sim-normalize-{run}",
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": f"test-sim-pseudonymize-{run}",
        "AFFLUENT_STREAMS__COHORT_GROUP": f"test-sim-cohort-{run}",
        "AFFLUENT_STREAMS__COHORT_STATE_DIR": str(tmp_path / "cohort-state"),
        "AFFLUENT_RUN__LOG_DIR": str(tmp_path / "logs"),
    }
    prepare_groups(settings, env)
    process = start_run(env, DEMO_COMPONENTS, subprocess.DEVNULL)
    lines: list[str] = []
    try:
        wait_ready(process, run_port, 120)
        plan = Plan(
            patients=30,
            rate=30,
            duration_s=8,
            senders=2,
            port=mllp_port,
            malformed_share=0.1,
            settle_s=120,  # only a loaded machine needs it: the wait ends once all is accounted for
            fhir=fhir,
            devices=devices,
        )
        plan = replace(plan, seed=_seed_with_malformed_everywhere(plan))
        monkeypatch.setenv("AFFLUENT_PSEUDO_KEY_FILE", env["AFFLUENT_PSEUDO_KEY_FILE"])
        accounts = asyncio.run(simulate(settings, plan, lines.append))
    finally:
        stop_run(process, 60)
        broker.stop()

    print("\n".join(lines + report_lines(accounts)))  # shown when the test fails
    assert set(accounts.channels) == CHANNELS, lines
    for name, tally in accounts.channels.items():
        assert tally.sent > 0, name
        # Every message got an answer: acknowledged, or refused at once.
        assert tally.acknowledged + sum(tally.refused.values()) == tally.sent, name
        assert tally.missing_messages == 0 and tally.missing_national == 0, (name, tally)
        assert tally.national_records > 0, name
    assert accounts.total.complete
    assert sum(accounts.total.drops.values()) > 0  # objecting patients' events were counted, not sent

    fhir_refused = accounts.channels["fhir"].refused
    assert sum(fhir_refused.values()) > 0
    assert all(code.startswith("HTTP 4") and code.endswith(" OperationOutcome") for code in fhir_refused)
    http_refused = accounts.channels["devices_http"].refused
    assert sum(http_refused.values()) > 0 and all(code.startswith("HTTP 400") for code in http_refused)
    mqtt = accounts.channels["devices_mqtt"]
    assert not mqtt.refused
    assert any(key.startswith("dlq.ingest ") for key in mqtt.dead), mqtt.dead
    http = accounts.channels["devices_http"]
    assert sum(http.canonical.values()) > http.acknowledged  # a monitor reading is two or three Observations
