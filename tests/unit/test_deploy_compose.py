"""deploy/compose is valid without a Docker engine: the compose file against the Compose Specification
schema, its references against the repository and the code's defaults, the Dockerfile against the rules
it claims (slim base, non-root user, a health check)."""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import yaml
from dockerfile_parse import DockerfileParser

from affluent.core.settings import MllpSettings, OppositionSettings, StreamsSettings
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
    last_from = max(i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM")
    stage = instructions[last_from:]
    problems = []
    if not stage[0]["value"].startswith("python:3.11-slim"):
        problems.append("final image is not python:3.11-slim")
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
        "COPY of missing nowhere"
    ]
