"""Bad configuration ends with one clear sentence and a non-zero exit: no traceback wall, no hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "affluent.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("affluent: error: ")
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(
            "stack",
            "up",
            "--no-registry",
            env={"AFFLUENT_STACK__STATE_DIR": str(tmp_path), "AFFLUENT_STACK__KAFKA_PORT": str(port)},
        )
    assert_clean_failure(result, f"port {port}", "already in use", "AFFLUENT_STACK__KAFKA_PORT")


def test_missing_java(tmp_path):
    result = run_cli(
        "stack",
        "up",
        env={
            "AFFLUENT_STACK__STATE_DIR": str(tmp_path),
            "AFFLUENT_STACK__JAVA_HOME": str(tmp_path / "no-jdk"),
        },
    )
    assert_clean_failure(result, "Java 17+ is needed", "AFFLUENT_STACK__JAVA_HOME")


def test_unreachable_registry(live_kafka):
    result = run_cli("demo", env={"AFFLUENT_REGISTRY__URL": "http://127.0.0.1:1/apis/ccompat/v7"}, timeout=60)
    assert_clean_failure(result, "registry", "127.0.0.1:1")


def test_unreachable_kafka():
    result = run_cli("demo", env={"AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=60)
    assert_clean_failure(result, "Kafka at 127.0.0.1:1 did not answer")


def test_invalid_settings():
    result = run_cli("stack", "status", env={"AFFLUENT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"})
    assert_clean_failure(result, "sasl_mechanism")


def test_missing_config_file(tmp_path):
    result = run_cli("stack", "status", env={"AFFLUENT_CONFIG": str(tmp_path / "nope.yaml")})
    assert_clean_failure(result, "AFFLUENT_CONFIG")
