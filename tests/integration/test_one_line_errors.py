"""Issue #22 against real processes and the real broker: ``affluent run`` stops at once on a child's
configuration error (exit 2) instead of restarting it forever; ``affluent tail --from-beginning`` stops
at the end of the topic unless ``--follow``; ``affluent demo --keep-running`` leaves its pipeline up for
the URLs it prints until Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from affluent.core.kafka import make_producer
from affluent.core.topics import value_subject
from affluent.sim.demo import demo_record
from schemas.registry import AvroCodec, load_schema

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "affluent.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_stops_at_once_when_a_child_has_a_configuration_error(live_kafka, tmp_path: Path) -> None:
    # A key file the supervisor's preflight accepts (it exists, mode 600) but the worker cannot use.
    keys = tmp_path / "keys.json"
    keys.write_text("not json\n")
    keys.chmod(0o600)
    env = {
        **os.environ,
        "AFFLUENT_PSEUDO_KEY_FILE": str(keys),
        "AFFLUENT_RUN__LOG_DIR": str(tmp_path),
        "AFFLUENT_RUN__METRICS_PORT": str(_free_port()),
        "AFFLUENT_RUN__RESTART_BACKOFF_MAX_S": "1",
        "AFFLUENT_MLLP__PORT": str(_free_port()),
        "AFFLUENT_MLLP__METRICS_PORT": str(_free_port()),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(_free_port()),
    }
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "run", "--only", "mllp,pseudonymize"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert took < 60, took
    (line,) = result.stderr.splitlines()
    assert line.startswith("affluent: error: pseudonymize: ") and "not valid JSON" in line, line
    assert "Traceback" not in result.stderr
    assert "pseudonymize refused to run (exit code 2)" in result.stdout
    stopped = next(s for s in result.stdout.splitlines() if "affluent run: stopped " in s)
    assert "pseudonymize (2)" in stopped
    log = (tmp_path / "pseudonymize.log").read_text(errors="replace")
    assert log.count("--- affluent run: starting pseudonymize") == 1  # never restarted


def test_tail_from_beginning_stops_at_the_end_unless_follow(settings, registry, new_topic) -> None:
    topic = new_topic("test.tail.end", partitions=3)
    codec = AvroCodec(registry, value_subject(topic), load_schema("raw_message"), "BACKWARD")
    producer = make_producer(settings.kafka)
    for n in range(5):
        producer.produce(topic, key=f"k{n}".encode(), value=codec.encode(demo_record()))
    assert producer.flush(15) == 0

    result = subprocess.run(
        [*CLI, "tail", topic, "--from-beginning"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["message_type"] for line in result.stdout.splitlines()] == ["ADT^A01"] * 5
    assert result.stderr == ""

    empty = new_topic("test.tail.empty", partitions=2)
    result = subprocess.run(
        [*CLI, "tail", empty, "--from-beginning"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    follow = subprocess.Popen(
        [*CLI, "tail", topic, "--from-beginning", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(8)  # long past the end of the topic: still waiting for more
        assert follow.poll() is None
        follow.send_signal(signal.SIGINT)
        output, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert len(output.splitlines()) == 5


@pytest.mark.slow
def test_demo_keep_running_leaves_the_pipeline_up_until_ctrl_c(live_kafka, registry) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": f"test-demo-normalize-{run}",
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": f"test-demo-pseudonymize-{run}",
    }
    demo = subprocess.Popen(
        [*CLI, "demo", "--duration", "4", "--rate", "20", "--keep-running"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "keeps running; Ctrl-C stops it" in line:
                break
        text = "\n".join(lines)
        assert "keeps running" in text, text[-3000:]
        assert re.search(r"Pseudonymization keys: \S+demo-keys\.json|from AFFLUENT_PSEUDO_KEY_FILE", text), (
            text
        )
        port = re.search(r"supervisor +http://127\.0\.0\.1:(\d+)/health", text)
        assert port is not None, text
        time.sleep(2)  # the accounting is done; the pipeline must still answer
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/health", timeout=5) as response:
            health = json.loads(response.read())
        assert health["ready"] and set(health["children"]) >= {"mllp", "fhir", "devices", "normalize"}
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        rest, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    lines += rest.splitlines()
    assert demo.returncode == 0, "\n".join(lines[-40:]) + err
    stopped = next(line for line in lines if "affluent run: stopped " in line)
    for component in ("mllp", "fhir", "devices", "normalize", "pseudonymize"):
        assert f"{component} (0)" in stopped, stopped
    assert "Traceback" not in err
