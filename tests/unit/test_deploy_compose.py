"""deploy/compose is valid without a Docker engine: the compose file against the Compose Specification
schema, its references against the repository and the code's defaults, the Dockerfile against the rules
it claims (slim base, non-root user, a health check), and every door against its own start-up check
(the MLLP door, published for other machines, with TLS, client certificates and the allow-list)."""

from __future__ import annotations

import io
import json
import re
import tomllib
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from affluent.core.errors import ConfigError
from affluent.core.settings import MllpSettings, OppositionSettings, Settings, StreamsSettings
from streams.pseudonymize.worker import DEFAULT_METRICS_PORT as PSEUDONYMIZE_PORT
from tests.support.observability import ROOT, unknown_settings

COMPOSE_DIR = ROOT / "deploy" / "compose"
SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "compose-spec.json"
DEFAULT_PORTS = {
    "mllp": MllpSettings().metrics_port,
    "normalize": StreamsSettings().metrics_port,
    "pseudonymize": PSEUDONYMIZE_PORT,
    "opposition": OppositionSettings().port,
}


def compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_follows_the_compose_specification() -> None:
    jsonschema.validate(compose(), json.loads(SCHEMA.read_text()))


def test_compose_schema_check_catches_a_mistake() -> None:
    broken = compose()
    broken["services"]["mllp"]["restart"] = ["always"]
    errors = list(jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))
    assert errors


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) == {
        "kafka",
        "registry",
        "mllp",
        "normalize",
        "pseudonymize",
        "opposition",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for name in ("mllp", "normalize", "pseudonymize", "opposition"):
        assert services[name]["command"][0] == name
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_host_paths_exist() -> None:
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), source
        build = service.get("build")
        if build:
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


def test_affluent_environment_names_real_settings() -> None:
    for name in ("mllp", "normalize", "pseudonymize", "opposition"):
        assert unknown_settings(compose()["services"][name]["environment"]) == []
    assert unknown_settings(["AFFLUENT_KAFKA__BOOTSTRAP_SERVER"]) == ["AFFLUENT_KAFKA__BOOTSTRAP_SERVER"]


def test_prometheus_targets_match_the_processes_ports() -> None:
    targets = yaml.safe_load((COMPOSE_DIR / "prometheus-targets.yml").read_text())
    local = yaml.safe_load((ROOT / "deploy" / "prometheus" / "targets" / "local.yml").read_text())
    for group in (*targets, *local):
        (target,) = group["targets"]
        component = group["labels"]["component"]
        assert int(target.rsplit(":", 1)[1]) == DEFAULT_PORTS[component], group
    for name, port in DEFAULT_PORTS.items():
        assert compose()["services"][name]["environment"]["AFFLUENT_HEALTH_PORT"] == str(port), name
    assert {g["labels"]["component"] for g in targets} == set(DEFAULT_PORTS)


def dockerfile_problems(text: str) -> list[str]:
    """The rules the Dockerfile claims, checked on its parsed final stage."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    instructions = parser.structure
    defaults = dict(
        ins["value"].split("=", 1)
        for ins in instructions
        if ins["instruction"] == "ARG" and "=" in ins["value"]
    )
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    stage = instructions[last_from:]
    problems = []
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), ""), ins["value"]).split()[0]
        for ins in instructions
        if ins["instruction"] == "FROM"
    ]
    if not bases[-1].startswith("python:3.11-slim"):
        problems.append("final image is not python:3.11-slim")
    if not all(re.search(r"@sha256:[0-9a-f]{64}$", base) for base in bases):
        problems.append("a base image is not pinned by digest")
    runs = " ".join(ins["value"] for ins in instructions if ins["instruction"] == "RUN")
    if "--require-hashes" not in runs or "requirements-runtime.lock" not in runs:
        problems.append("third-party packages not installed from the hashed lock")
    copied = {ins["value"].split()[0] for ins in instructions if ins["instruction"] == "COPY"}
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    problems += [f"package {p} not copied into the image" for p in sorted(packages - copied)]
    users = [ins["value"].strip().split(":")[0] for ins in stage if ins["instruction"] == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("runs as root")
    checks = [ins["value"] for ins in stage if ins["instruction"] == "HEALTHCHECK"]
    if len(checks) != 1 or "CMD" not in checks[0] or "/health" not in checks[0]:
        problems.append("no HEALTHCHECK on /health")
    if not any(ins["instruction"] == "ENTRYPOINT" and "affluent" in ins["value"] for ins in stage):
        problems.append("entrypoint is not affluent")
    for ins in instructions:
        if ins["instruction"] == "COPY" and "--from" not in ins["value"]:
            problems += [
                f"COPY of missing {src}" for src in ins["value"].split()[:-1] if not (ROOT / src).exists()
            ]
    return problems


DOCKERFILE = (COMPOSE_DIR / "Dockerfile").read_text()


def test_dockerfile_runs_slim_as_non_root_with_a_healthcheck() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


def test_the_dockerfile_rules_catch_mistakes() -> None:
    assert dockerfile_problems(DOCKERFILE.replace("USER 10001:10001", "USER root")) == ["runs as root"]
    assert dockerfile_problems(DOCKERFILE.replace("USER 10001:10001\n", "")) == ["runs as root"]
    no_check = DOCKERFILE[: DOCKERFILE.index("HEALTHCHECK")] + DOCKERFILE[DOCKERFILE.index("ENTRYPOINT") :]
    assert dockerfile_problems(no_check) == ["no HEALTHCHECK on /health"]
    assert dockerfile_problems(DOCKERFILE.replace("COPY streams streams", "COPY nowhere streams")) == [
        "package streams not copied into the image",  # formats/ was missing before this rule
        "COPY of missing nowhere",
    ]
    tag_only = re.sub(r"@sha256:[0-9a-f]{64}", "", DOCKERFILE)
    assert dockerfile_problems(tag_only) == ["a base image is not pinned by digest"]
    unhashed = DOCKERFILE.replace("--require-hashes ", "")
    assert dockerfile_problems(unhashed) == ["third-party packages not installed from the hashed lock"]


# --- a hostile network ------------------------------------------------------------------------------

REQUIRED_VARIABLE = re.compile(r"^\$\{(\w+):\?[^}]*\}$")


def service_env(name: str, variables: dict[str, str]) -> dict[str, str]:
    """The process's environment: the image's ENV, then the service's, ``${VAR:?…}`` filled in."""
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.encode()))
    env = {k: v for k, v in parser.envs.items() if k.startswith("AFFLUENT_")}
    for key, value in compose()["services"][name]["environment"].items():
        required = REQUIRED_VARIABLE.match(str(value))
        env[key] = variables[required.group(1)] if required else str(value)
    return env


def door_check(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The door's own start-up check, on settings from ``env``, the key files aside."""
    import os

    from affluent.components import COMPONENTS

    for variable in [n for n in os.environ if n.startswith("AFFLUENT_")]:
        monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr("connectors.mllp.service.check_key_file", lambda path, setting: None)
    monkeypatch.setattr("affluent.core.tls.check_key_file", lambda path, setting: None)  # HTTP doors
    (row,) = [c for c in COMPONENTS if c.name == name]
    assert row.check is not None
    row.check(Settings(_env_file=None))  # type: ignore[call-arg]


SENDERS = {
    "AFFLUENT_MLLP_ALLOWED_SUBJECTS": '{"CHU-A": ["lis.chu-a.test"]}',
    "AFFLUENT_OPPOSITION_TOKENS": "{}",
}


def test_mllp_door_defaults_to_tls_client_certificates_and_the_allow_list(monkeypatch) -> None:
    mllp = compose()["services"]["mllp"]
    env = service_env("mllp", SENDERS)
    assert env["AFFLUENT_MLLP__HOST"] == "0.0.0.0" and mllp["ports"] == ["2575:2575"]
    assert env["AFFLUENT_MLLP__TLS_REQUIRE_CLIENT_CERTIFICATE"] == "true"
    # The allow-list has no default: compose refuses to start without it (${…:?…}).
    assert REQUIRED_VARIABLE.match(mllp["environment"]["AFFLUENT_MLLP__TLS_ALLOWED_SUBJECTS"])
    declared = compose()["secrets"]
    for setting in ("TLS_CERTIFICATE", "TLS_KEY", "TLS_CLIENT_CA"):
        secret = env[f"AFFLUENT_MLLP__{setting}"].removeprefix("/run/secrets/")
        assert secret in mllp["secrets"] and declared[secret]["file"].startswith("./secrets/"), setting
    door_check("mllp", env, monkeypatch)
    plain = {k: v for k, v in env.items() if "__TLS_" not in k}
    with pytest.raises(ConfigError, match="beyond loopback"):
        door_check("mllp", plain, monkeypatch)


def test_no_door_is_published_beyond_loopback_in_clear_text(monkeypatch) -> None:
    for name in ("mllp", "opposition"):
        env = service_env(name, SENDERS)
        door_check(name, env, monkeypatch)
        plaintext = env.get(f"AFFLUENT_{name.upper()}__ALLOW_PLAINTEXT") == "true"
        published = compose()["services"][name].get("ports", [])
        if plaintext:  # then only on this machine's loopback
            assert published and all(p.startswith("127.0.0.1:") for p in published), name
    assert compose()["services"]["opposition"]["ports"] == ["127.0.0.1:8090:8090"]
