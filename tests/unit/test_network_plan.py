"""The pure parts of the network: topology, MirrorMaker file, topic and schema-id guards."""

from __future__ import annotations

import json
import re

import pytest

from affluent.core.errors import AffluentError
from affluent.core.settings import NetworkSettings
from affluent.local.network import (
    Flow,
    cluster_ports,
    foreign_topics,
    mirror_properties,
    plan_topology,
    schema_parity,
    task_states,
)
from schemas.catalog import NATIONAL_TOPICS

POLICY = (NetworkSettings().deploy_dir / "mm2-policy.properties").read_text()


def java_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for our file: `key = value` lines, `\\\\` unescaped to `\\`."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().replace("\\\\", "\\")
    return out


def test_three_levels_two_hospitals_flow_upwards_only() -> None:
    topology = plan_topology(["hospital", "region", "national"], hospitals=2)
    assert topology.clusters == ("hospital1", "hospital2", "region", "national")
    assert topology.flows == (
        Flow("hospital1", "region"),
        Flow("hospital2", "region"),
        Flow("region", "national"),
    )
    assert topology.targets == ("region", "national")
    assert topology.sources_of("region") == ("hospital1", "hospital2")


@pytest.mark.parametrize(
    "levels",
    [
        ["national", "hospital"],
        ["hospital"],
        ["hospital", "region"],
        ["hospital", "hospital", "national"],
        ["x"],
    ],
)
def test_bad_level_lists_are_refused(levels: list[str]) -> None:
    with pytest.raises(AffluentError):
        plan_topology(levels)


def test_ports_of_clusters_do_not_overlap_and_avoid_the_shared_stack() -> None:
    ports = [cluster_ports(19100, i) for i in range(4)]
    used = [
        p for c in ports for p in (c.kafka, c.kafka + 1, c.registry, c.registry_management, c.mirror_metrics)
    ]
    assert len(set(used)) == len(used)
    assert not {9092, 9093, 8081, 9001} & set(used)


def test_mirror_file_replicates_only_national_topics_under_their_own_names() -> None:
    props = java_properties(
        mirror_properties(POLICY, "national", ["region"], {"region": "r:1", "national": "n:1"}, 1)
    )
    assert props["clusters"] == "region, national"
    assert props["region->national.enabled"] == "true"
    assert "national->region.enabled" not in props
    assert props["replication.policy.class"].endswith("IdentityReplicationPolicy")
    assert props["national.producer.acks"] == "all"
    assert "{target}" not in "".join(props)
    allow = re.compile(props["topics"])
    deny = [re.compile(p.strip()) for p in props["topics.exclude"].split(",")]
    for topic in NATIONAL_TOPICS:
        assert allow.fullmatch(topic) and not any(d.fullmatch(topic) for d in deny)
    for topic in (
        "ingest.hl7v2.raw",
        "canonical.patient",
        "control.opposition",
        "dlq.ingest",
        "kafkasql-journal",
    ):
        assert not allow.fullmatch(topic) or any(d.fullmatch(topic) for d in deny)
    assert props["sync.group.offsets.enabled"] == "false"
    assert props["emit.checkpoints.enabled"] == "false"


def test_only_national_and_infrastructure_topics_are_allowed_upstream() -> None:
    topology = plan_topology(["hospital", "region", "national"], hospitals=2)
    region_topics = [
        "national.hdh.patient.v1",
        "heartbeats",
        "kafkasql-journal",
        "mm2-status.hospital2.internal",
        "ingest.hl7v2.raw",
        "mm2-offsets.region.internal",
    ]
    assert foreign_topics(topology, "region", region_topics) == [
        "ingest.hl7v2.raw",
        "mm2-offsets.region.internal",
    ]
    national_topics = [
        "heartbeats",
        "region.heartbeats",
        "hospital1.heartbeats",
        "mm2-status.region.internal",
    ]
    assert foreign_topics(topology, "national", national_topics) == ["hospital1.heartbeats"]


def test_schema_parity_names_every_mismatch() -> None:
    schema = json.dumps({"type": "record", "name": "R", "fields": []})
    other = json.dumps({"type": "record", "name": "S", "fields": []})
    lower = {
        "national.hdh.patient.v1-value": (14, schema),
        "national.hdh.encounter.v1-value": (15, schema),
        "national.hdh.observation.v1-value": (16, schema),
        "canonical.patient-value": (3, schema),
    }
    upper = {
        "national.hdh.patient.v1-value": (14, json.dumps(json.loads(schema), indent=2)),
        "national.hdh.encounter.v1-value": (2, schema),
        "national.hdh.observation.v1-value": (16, other),
    }
    assert schema_parity(lower, upper) == [
        "national.hdh.encounter.v1-value: id 15 here, 2 upstream",
        "national.hdh.observation.v1-value: id 16 names different schemas",
    ]
    assert schema_parity(lower, {}) == [
        "national.hdh.encounter.v1-value: missing upstream",
        "national.hdh.observation.v1-value: missing upstream",
        "national.hdh.patient.v1-value: missing upstream",
    ]


def test_task_states_keep_the_latest_state_per_key() -> None:
    records = [
        (b"status-task-MirrorSourceConnector-0", json.dumps({"state": "UNASSIGNED"}).encode()),
        (b"status-task-MirrorSourceConnector-0", json.dumps({"state": "RUNNING", "trace": None}).encode()),
        (b"status-connector-MirrorCheckpointConnector", None),
        (b"status-task-MirrorHeartbeatConnector-0", b"not json"),
    ]
    assert task_states(records) == {"status-task-MirrorSourceConnector-0": "RUNNING"}
