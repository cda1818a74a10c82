"""deploy/k8s is valid without a cluster: built-in kinds against the Kubernetes schemas (kubernetes-validate,
strict), custom resources against the Strimzi / Prometheus Operator subsets, and the manifests against
the code: every topic it uses exists, every component's ACLs allow what it does and no more than its
job, probes and ports match what the processes serve, and every door passes its own start-up check
(TLS beyond loopback; MLLP with required client certificates and the per-facility allow-list)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from affluent.core.errors import ConfigError
from affluent.core.settings import (
    DeviceSettings,
    FhirRestSettings,
    MllpSettings,
    OppositionSettings,
    Settings,
    StreamsSettings,
)
from affluent.core.topics import (
    ACK_CACHE_CONFIG,
    COMPACTED_CONFIG,
    CONTROL_ACK,
    CONTROL_AUDIT,
    CONTROL_DEVICES,
    CONTROL_FHIR_SEEN,
    CONTROL_OPPOSITION,
    CORE_TOPICS,
    DLQ_INGEST,
    INGEST_DEVICE_RAW,
    INGEST_FHIR_RAW,
    INGEST_HL7V2_RAW,
    audit_topic,
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
    used |= {CONTROL_AUDIT}
    assert set(topics()) == used
    declared = topics()
    audit = audit_topic(Settings().audit.retention_ms)  # AFFLUENT_AUDIT__RETENTION_MS's default
    for name, config in (
        (CONTROL_ACK, ACK_CACHE_CONFIG),
        (CONTROL_OPPOSITION, COMPACTED_CONFIG),
        (CONTROL_AUDIT, audit.config),
    ):
        assert {k: declared[name]["config"][k] for k in config} == config
    assert declared[CONTROL_AUDIT]["partitions"] == audit.partitions == 1
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
        "Write": {INGEST_HL7V2_RAW, DLQ_INGEST, CONTROL_ACK, CONTROL_AUDIT},
        "Read": {CONTROL_ACK},
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-normalize": {
        "Read": {*RAW_TOPICS, CONTROL_DEVICES},
        "Write": {*CANONICAL_TOPICS, DLQ_NORMALIZE, CONTROL_AUDIT},
        "Describe": {*RAW_TOPICS, *CANONICAL_TOPICS, DLQ_NORMALIZE, CONTROL_DEVICES},
    },
    "affluent-pseudonymize": {
        "Read": {*CANONICAL_TOPICS, CONTROL_OPPOSITION},
        "Write": {*NATIONAL_TOPICS, DLQ_PSEUDONYMIZE, CONTROL_AUDIT},
        "Describe": {spec.name for spec in worker_topics(PSEUDONYMIZE_GROUP)},
    },
    "affluent-fhir": {
        "Write": {INGEST_FHIR_RAW, CONTROL_FHIR_SEEN, CONTROL_AUDIT},
        "Read": {CONTROL_FHIR_SEEN},
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-devices": {
        "Write": {INGEST_DEVICE_RAW, DLQ_INGEST, CONTROL_AUDIT},
        "Read": {CONTROL_DEVICES},  # the device registry: which sender may send for which device
        "Describe": {spec.name for spec in CORE_TOPICS},
    },
    "affluent-opposition": {
        "Read": {CONTROL_OPPOSITION},
        "Write": {CONTROL_OPPOSITION, *RETRACTION_TOPICS, CONTROL_AUDIT},
        "Describe": {CONTROL_OPPOSITION, *RETRACTION_TOPICS},
    },
    # The command line's audited control actions: objections, device links (tokens and key rotations
    # write only their entry). It writes the trail and cannot read it.
    "affluent-operator": {
        "Read": {CONTROL_OPPOSITION, CONTROL_DEVICES},
        "Write": {CONTROL_AUDIT, CONTROL_OPPOSITION, *RETRACTION_TOPICS, CONTROL_DEVICES},
        "Describe": {CONTROL_AUDIT, CONTROL_OPPOSITION, *RETRACTION_TOPICS, CONTROL_DEVICES},
    },
    # affluent audit list: the trail, and nothing else.
    "affluent-auditor": {"Read": {CONTROL_AUDIT}, "Describe": {CONTROL_AUDIT}},
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
        "affluent-devices": "affluent-devices-registry-x",  # its registry view's private group
        "affluent-operator": "affluent-device-registry-cli-x",
        "affluent-auditor": "affluent-range-x",  # affluent/core/ranges.py's throw-away groups
    }
    assert allowed(user, "Read", "group", groups.get(user, PSEUDONYMIZE_GROUP))
    if user == "affluent-devices":  # the registry view's group only
        assert not any(allowed(user, "Read", "group", g) for g in (NORMALIZE_GROUP, PSEUDONYMIZE_GROUP))
    everything = set(topics())
    for operation in ("Read", "Write"):
        extra = {n for n in everything if allowed(user, operation, "topic", n)} - NEEDS[user].get(
            operation, set()
        )
        assert extra == set(), (operation, extra)
    for operation in ("Create", "Delete", "Alter"):
        assert not any(allowed(user, operation, "topic", n) for n in everything)
    # Every component writes its start to the audit trail; only the auditor reads it.
    assert allowed(user, "Read", "topic", CONTROL_AUDIT) == (user == "affluent-auditor")
    assert allowed(user, "Write", "topic", CONTROL_AUDIT) == (user != "affluent-auditor")


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


# --- a hostile network: every door that listens beyond loopback is protected ---------------------------


def container_env(component: str) -> dict[str, str]:
    """What the component's process sees: the shared ConfigMap under its own env entries."""
    (config,) = of_kind("ConfigMap")
    (container,) = deployments()[component]["spec"]["template"]["spec"]["containers"]
    return {**config["data"], **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in [n for n in os.environ if n.startswith("AFFLUENT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def door_check(component: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The door's own start-up check, the key files aside (they exist only in a cluster)."""
    from affluent.components import COMPONENTS

    (row,) = [c for c in COMPONENTS if c.name == component]
    assert row.check is not None
    # HTTP doors check their key through affluent.core.tls.refuse_clear_http; MLLP and MQTT directly.
    for module in ("affluent.core.tls", "connectors.mllp.service", "connectors.devices.service"):
        monkeypatch.setattr(f"{module}.check_key_file", lambda path, setting: None)
    row.check(settings)


def mounted(component: str, path: str) -> str | None:
    """The Secret mounted where ``path`` lies, if any."""
    pod = deployments()[component]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]) and "secret" in volumes[mount["name"]]:
            return str(volumes[mount["name"]]["secret"]["secretName"])
    return None


def test_mllp_defaults_to_tls_client_certificates_and_the_facility_allow_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = container_env("mllp")
    assert env["AFFLUENT_MLLP__HOST"] == "0.0.0.0"
    assert env["AFFLUENT_MLLP__TLS_REQUIRE_CLIENT_CERTIFICATE"] == "true"
    for name, secret in (
        ("AFFLUENT_MLLP__TLS_CERTIFICATE", "affluent-mllp-tls"),
        ("AFFLUENT_MLLP__TLS_KEY", "affluent-mllp-tls"),
        ("AFFLUENT_MLLP__TLS_CLIENT_CA", "affluent-mllp-client-ca"),
    ):
        assert mounted("mllp", env[name]) == secret, name
    assert {"affluent-mllp-tls", "affluent-mllp-client-ca"} <= {
        s["metadata"]["name"] for s in of_kind("Secret")
    }
    # Shipped with an empty allow-list, the door refuses to start until the operator lists the senders,
    # and for that reason only: TLS and required client certificates are already configured.
    with pytest.raises(ConfigError) as refused:
        door_check("mllp", settings_from(env, monkeypatch), monkeypatch)
    assert "allow-list" in str(refused.value)
    assert "TLS (" not in str(refused.value) and "client certificates" not in str(refused.value)
    senders = {"AFFLUENT_MLLP__TLS_ALLOWED_SUBJECTS": '{"CHU-A": ["lis.chu-a.test"]}'}
    door_check("mllp", settings_from({**env, **senders}, monkeypatch), monkeypatch)
    # The check does fail on the manifests of before: 2575 behind a LoadBalancer in clear text.
    without_tls = {k: v for k, v in env.items() if not k.startswith("AFFLUENT_MLLP__TLS_")}
    with pytest.raises(ConfigError, match="TLS"):
        door_check("mllp", settings_from(without_tls, monkeypatch), monkeypatch)


@pytest.mark.parametrize("component", ["fhir", "devices"])
def test_http_doors_behind_load_balancers_serve_https(
    component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = container_env(component)
    prefix = {"fhir": "AFFLUENT_FHIR_REST", "devices": "AFFLUENT_DEVICES"}[component]
    assert env[f"{prefix}__HOST"] == "0.0.0.0"
    assert not any(k.endswith("ALLOW_PLAINTEXT") for k in env)
    assert mounted(component, env[f"{prefix}__TLS_KEY"]) == f"affluent-{component}-tls"
    door_check(component, settings_from(env, monkeypatch), monkeypatch)
    with pytest.raises(ConfigError, match="TLS"):
        plain = {k: v for k, v in env.items() if "__TLS_" not in k}
        door_check(component, settings_from(plain, monkeypatch), monkeypatch)


def test_device_door_requires_the_gateway_binding() -> None:
    assert container_env("devices")["AFFLUENT_DEVICES__REQUIRE_GATEWAY_BINDING"] == "true"


def test_opposition_in_clear_text_is_reachable_only_through_the_ingress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = container_env("opposition")
    assert env["AFFLUENT_OPPOSITION__ALLOW_PLAINTEXT"] == "true"
    door_check("opposition", settings_from(env, monkeypatch), monkeypatch)
    services = [s for s in of_kind("Service") if s["metadata"]["name"] == "affluent-opposition"]
    assert [s["spec"].get("type", "ClusterIP") for s in services] == ["ClusterIP"]
    (policy,) = [p for p in of_kind("NetworkPolicy") if p["metadata"]["name"] == "affluent-opposition"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "opposition"
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_only_doors_with_tls_are_behind_load_balancers() -> None:
    exposed = {
        s["spec"]["selector"]["app.kubernetes.io/component"]
        for s in of_kind("Service")
        if s["spec"].get("type") == "LoadBalancer"
    }
    assert exposed == {"mllp", "fhir", "devices"}
    for component in exposed:
        assert any(k.endswith("__TLS_CERTIFICATE") for k in container_env(component)), component
