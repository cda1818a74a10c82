"""deploy/k8s is valid without a cluster: built-in kinds against the Kubernetes schemas (kubernetes-validate,
strict), custom resources against the Strimzi / Prometheus Operator subsets, and the manifests against
the code: every topic it uses exists, every component's ACLs allow what it does and no more than its
job, probes and ports match what the processes serve."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from affluent.core.settings import (
    DeviceSettings,
    FhirRestSettings,
    MllpSettings,
    OppositionSettings,
    StreamsSettings,
)
from affluent.core.topics import (
    ACK_CACHE_CONFIG,
    COMPACTED_CONFIG,
    CONTROL_ACK,
    CONTROL_DEVICES,
    CONTROL_FHIR_SEEN,
    CONTROL_OPPOSITION,
    CORE_TOPICS,
    DLQ_INGEST,
    INGEST_DEVICE_RAW,
    INGEST_FHIR_RAW,
    INGEST_HL7V2_RAW,
)
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS
from streams.normalize.worker import RAW_TOPICS
from streams.pseudonymize.worker import DEFAULT_GROUP as PSEUDONYMIZE_GROUP
from streams.pseudonymize.worker import DEFAULT_METRICS_PORT as PSEUDONYMIZE_PORT
from streams.pseudonymize.worker import worker_topics
from tests.support.observability import ROOT, unknown_settings

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
SUBSETS = yaml.safe_load((ROOT / "tests" / "fixtures" / "schemas" / "crd-subsets.yaml").read_text())
NORMALIZE_GROUP = StreamsSettings().normalize_group
PORTS = {"mllp": MllpSettings().metrics_port, "normalize": StreamsSettings().metrics_port}
PORTS["pseudonymize"] = PSEUDONYMIZE_PORT
PORTS["opposition"] = OppositionSettings().port
COMMANDS = {"mllp": ["mllp"], "normalize": ["normalize"], "pseudonymize": ["pseudonymize"]}
COMMANDS["opposition"] = ["opposition", "serve"]
PORTS["fhir"] = FhirRestSettings().metrics_port
PORTS["devices"] = DeviceSettings().metrics_port
COMMANDS["fhir"] = ["fhir"]
COMMANDS["devices"] = ["devices", "serve"]
RETRACTION_TOPICS = {t for t in NATIONAL_TOPICS if t.endswith(".retraction.v1")}


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


DOCS = list(documents())


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def crd_problems(doc: dict[str, Any]) -> list[str]:
    schema = {**SUBSETS["kinds"][doc["kind"]], "definitions": SUBSETS["definitions"]}
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['metadata']['name']}" for n, d in DOCS])
def test_every_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in SUBSETS["kinds"]:
        assert crd_problems(doc) == []
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validators_catch_mistakes() -> None:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "affluent-mllp"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    user = yaml.safe_load(yaml.safe_dump(of_kind("KafkaUser")[0]))
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Write", "Publish"]
    assert crd_problems(user)
    topic = yaml.safe_load(yaml.safe_dump(of_kind("KafkaTopic")[0]))
    topic["spec"]["partition"] = 3
    assert crd_problems(topic)


def test_every_kind_is_present() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert kinds >= {
        "Namespace",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }
    pools = {p["metadata"]["name"]: p["spec"]["roles"] for p in of_kind("KafkaNodePool")}
    assert sorted(r for roles in pools.values() for r in roles) == ["broker", "controller"]


def topics() -> dict[str, dict[str, Any]]:
    return {t["spec"].get("topicName", t["metadata"]["name"]): t["spec"] for t in of_kind("KafkaTopic")}


def test_every_topic_the_code_uses_is_declared() -> None:
    used = {spec.name for spec in CORE_TOPICS} | set(CANONICAL_TOPICS) | set(NATIONAL_TOPICS)
    used |= {DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, *RAW_TOPICS}
    used |= {spec.name for spec in worker_topics(PSEUDONYMIZE_GROUP)}
    assert set(topics()) == used
    declared = topics()
    for name, config in ((CONTROL_ACK, ACK_CACHE_CONFIG), (CONTROL_OPPOSITION, COMPACTED_CONFIG)):
        assert {k: declared[name]["config"][k] for k in config} == config
    assert all(
        spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == "2" for spec in declared.values()
    )


def allowed(user: str, operation: str, resource_type: str, name: str) -> bool:
    (spec,) = [u["spec"] for u in of_kind("KafkaUser") if u["metadata"]["name"] == user]
    for acl in spec["authorization"]["acls"]:
        res = acl["resource"]
        if acl.get("type", "allow") != "allow" or res["type"] != resource_type:
            continue
        ops = set(acl["operations"])
        if operation not in ops and not (operation == "Describe" and ops & {"Read", "Write"}):
            continue
        if res["type"] == "cluster":
            return True
        pattern = res.get("patternType", "literal")
        if (pattern == "literal" and res["name"] == name) or (
            pattern == "prefix" and name.startswith(res["name"])
        ):
            return True
    return False


NEEDS = {
    "affluent-mllp": {
        "Write": {INGEST_HL7V2_RAW, DLQ_INGEST, CONTROL_ACK},
        "Read": {CONTROL_ACK},
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-normalize": {
        "Read": {*RAW_TOPICS, CONTROL_DEVICES},
        "Write": {*CANONICAL_TOPICS, DLQ_NORMALIZE},
        "Describe": {*RAW_TOPICS, *CANONICAL_TOPICS, DLQ_NORMALIZE, CONTROL_DEVICES},
    },
    "affluent-pseudonymize": {
        "Read": {*CANONICAL_TOPICS, CONTROL_OPPOSITION},
        "Write": {*NATIONAL_TOPICS, DLQ_PSEUDONYMIZE},
        "Describe": {spec.name for spec in worker_topics(PSEUDONYMIZE_GROUP)},
    },
    "affluent-fhir": {
        "Write": {INGEST_FHIR_RAW, CONTROL_FHIR_SEEN},
        "Read": {CONTROL_FHIR_SEEN},
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-devices": {
        "Write": {INGEST_DEVICE_RAW, DLQ_INGEST},
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-opposition": {
        "Read": {CONTROL_OPPOSITION},
        "Write": {CONTROL_OPPOSITION, *RETRACTION_TOPICS},
        "Describe": {CONTROL_OPPOSITION, *RETRACTION_TOPICS},
    },
}


@pytest.mark.parametrize("user", sorted(NEEDS))
def test_acls_allow_what_each_component_does_and_no_more(user: str) -> None:
    for operation, names in NEEDS[user].items():
        for name in names:
            assert allowed(user, operation, "topic", name), (operation, name)
    groups = {
        "affluent-mllp": "affluent-ack-x",
        "affluent-normalize": NORMALIZE_GROUP,
        "affluent-opposition": "affluent-opposition-service-x",
        "affluent-fhir": "affluent-fhir-seen-x",
    }
    if user == "affluent-devices":  # reads no topic: no consumer group at all
        assert not any(allowed(user, "Read", "group", g) for g in (*groups.values(), PSEUDONYMIZE_GROUP))
    else:
        assert allowed(user, "Read", "group", groups.get(user, PSEUDONYMIZE_GROUP))
    everything = set(topics())
    for operation in ("Read", "Write"):
        extra = {n for n in everything if allowed(user, operation, "topic", n)} - NEEDS[user].get(
            operation, set()
        )
        assert extra == set(), (operation, extra)
    for operation in ("Create", "Delete", "Alter"):
        assert not any(allowed(user, operation, "topic", n) for n in everything)


def deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"].removeprefix("affluent-"): d for d in of_kind("Deployment")}


def test_deployments_probe_and_expose_the_telemetry_server() -> None:
    assert set(deployments()) == set(PORTS)
    for component, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == COMMANDS[component]
        assert pod["securityContext"]["runAsNonRoot"] is True
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == PORTS[component]
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["AFFLUENT_HEALTH_PORT"] == str(PORTS[component])
        assert unknown_settings(env) == []
        mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert f"affluent-{component}" in mounted, "the component's KafkaUser certificate"
    (config,) = of_kind("ConfigMap")
    assert unknown_settings(config["data"]) == []


def test_pdb_per_component_and_hpa_for_workers_within_partitions() -> None:
    pdbs = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in of_kind("PodDisruptionBudget")
    }
    assert pdbs == set(PORTS)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {"affluent-normalize", "affluent-pseudonymize"}
    inputs = {"affluent-normalize": RAW_TOPICS, "affluent-pseudonymize": CANONICAL_TOPICS}
    for name, spec in hpas.items():
        partitions = min(topics()[t]["partitions"] for t in inputs[name])
        assert 1 < spec["minReplicas"] <= spec["maxReplicas"] <= partitions


def test_servicemonitor_scrapes_every_component_as_job_affluent() -> None:
    (monitor,) = of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped} == set(PORTS)
    for service in scraped:
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "affluent"
        assert [p["name"] for p in service["spec"]["ports"]] == [monitor["spec"]["endpoints"][0]["port"]]


def test_secret_templates_hold_no_secret() -> None:
    for secret in of_kind("Secret"):
        assert "data" not in secret
        assert all(value == "" for value in secret.get("stringData", {}).values())
