"""`affluent run` supervises real children: a SIGKILLed door comes back (and is counted), SIGTERM stops
the group cleanly; `affluent tail` decodes a topic's records through the registry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from affluent.core.kafka import make_producer
from affluent.core.topics import value_subject
from affluent.sim.demo import demo_record
from affluent.sim.synthetic import adt, cohort
from connectors.mllp.client import MllpClient, ack_code
from schemas.registry import AvroCodec, load_schema

pytestmark = [pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def _wait(port: int, check, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = _health(port)
        if health is not None and check(health):
            return health
        time.sleep(0.3)
    raise AssertionError(f"supervisor never got there: {_health(port)}")


async def _send_one(port: int) -> str:
    from datetime import datetime

    client = await MllpClient.connect("127.0.0.1", port)
    try:
        payload = adt(cohort(3, 1)[0], "A01", f"RUNTEST{time.time_ns()}", datetime(2026, 11, 24, 9), "V1")
        (reply,) = await client.request(payload)
        return ack_code(reply)[0]
    finally:
        await client.close()


def test_run_restarts_a_killed_door_and_stops_cleanly(live_kafka, tmp_path):
    run_port, mllp_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "AFFLUENT_RUN__METRICS_PORT": str(run_port),
        "AFFLUENT_RUN__LOG_DIR": str(tmp_path),
        "AFFLUENT_RUN__RESTART_BACKOFF_MAX_S": "1",
        "AFFLUENT_MLLP__PORT": str(mllp_port),
        "AFFLUENT_MLLP__METRICS_PORT": str(_free_port()),
    }
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "affluent.cli", "run", "--only", "mllp"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = _wait(run_port, lambda h: h["ready"])
        assert list(health["children"]) == ["mllp"]
        first_pid = health["children"]["mllp"]["pid"]
        assert asyncio.run(_send_one(mllp_port)) == "AA"

        os.kill(first_pid, signal.SIGKILL)
        health = _wait(
            run_port,
            lambda h: h["ready"] and h["children"]["mllp"]["pid"] not in (None, first_pid),
        )
        assert health["children"]["mllp"]["restarts"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{run_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'affluent_run_restarts_total{component="mllp"} 1.0' in metrics
        assert 'affluent_run_child_up{component="mllp"} 1.0' in metrics
        assert asyncio.run(_send_one(mllp_port)) == "AA"  # the new door answers on the same port

        supervisor.send_signal(signal.SIGTERM)
        output, _ = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 0, output
    assert "stopped mllp (0)" in output
    assert (tmp_path / "mllp.log").read_text(errors="replace").count("--- affluent run: starting mllp") == 2


def test_tail_prints_decoded_records_as_json_lines(settings, registry, new_topic):
    topic = new_topic("test.tail")
    codec = AvroCodec(registry, value_subject(topic), load_schema("raw_message"), "BACKWARD")
    record = demo_record()
    producer = make_producer(settings.kafka)
    producer.produce(topic, key=b"k", value=codec.encode(record))
    assert producer.flush(15) == 0
    result = subprocess.run(
        [sys.executable, "-m", "affluent.cli", "tail", topic, "--from-beginning", "--max", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    shown = json.loads(line)
    assert shown["raw_id"] == record["raw_id"]
    assert shown["message_type"] == "ADT^A01"
