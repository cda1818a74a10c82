"""The local three-level network: hospital -> region -> national, each an independent Kafka cluster.

Each level runs its own single-node cluster and registry (a :class:`LocalStack` with its own ports and
state folder under ``.state/network/<alias>/``), and MirrorMaker 2 in dedicated mode copies only
``national.*`` topics one level up. MirrorMaker runs at the *target* side (pull model): the level that
receives data runs the process that fetches it, so a lower level never needs credentials upstream
beyond what its upper level grants it, and an upper level that is down simply stops pulling.

Schema ids: records keep the Confluent wire format header written at the hospital, and MirrorMaker
copies bytes, so every level must resolve the same id to the same schema. Every level registers the
whole schema catalog in catalog order (the catalog is the id authority), and :func:`schema_parity`
refuses to start replication when the national subjects' ids differ between two levels
(docs/network.md, "Schemas at each level").
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from affluent.core.errors import AffluentError, StackError
from affluent.core.kafka import QUIET_LOGGER, TopicSpec, ensure_topics, make_consumer
from affluent.core.settings import KafkaSettings, NetworkSettings, RegistrySettings, StackSettings
from affluent.local.stack import (
    MIN_KAFKA_JAVA,
    ComponentStatus,
    LocalStack,
    _run_maven,
    _spawn,
    _stop,
    _tail,
    fetch_pom,
    find_java,
)
from schemas.catalog import NATIONAL_PREFIX, NATIONAL_TOPICS, register_all
from schemas.registry import Registry

LEVELS = ("hospital", "region", "national")
NETWORK_FILE = "network.json"
MIRROR_MAIN = "org.apache.kafka.connect.mirror.MirrorMaker"
POLICY_FILE = "mm2-policy.properties"
# Topics MirrorMaker 2 itself creates on an upper cluster (dedicated mode, checkpoints and offset-syncs
# off): the Connect worker's three internal topics per source, and the heartbeats topic.
MIRROR_INTERNAL_TOPICS = (
    "mm2-configs.{source}.internal",
    "mm2-offsets.{source}.internal",
    "mm2-status.{source}.internal",
)
HEARTBEATS_TOPIC = "heartbeats"
# The registry's own storage topic (Apicurio KafkaSQL) on every cluster that runs a registry.
REGISTRY_TOPICS = ("kafkasql-journal", "kafkasql-snapshots", "registry-events")


@dataclass(frozen=True, slots=True)
class Flow:
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Cluster aliases, lowest level first, and the one-directional flows between them."""

    clusters: tuple[str, ...]
    flows: tuple[Flow, ...]

    def sources_of(self, target: str) -> tuple[str, ...]:
        return tuple(f.source for f in self.flows if f.target == target)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(c for c in self.clusters if self.sources_of(c))

    def to_json(self) -> dict[str, Any]:
        return {"clusters": list(self.clusters), "flows": [[f.source, f.target] for f in self.flows]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Topology:
        return cls(tuple(data["clusters"]), tuple(Flow(s, t) for s, t in data["flows"]))


def plan_topology(levels: Sequence[str], hospitals: int = 1) -> Topology:
    """The chain of levels, hospitals first: every cluster of one level feeds the single cluster above.

    Only upward flows exist: with the identity replication policy a downward flow would form a loop that
    MirrorMaker cannot detect.
    """
    levels = [level.strip() for level in levels if level.strip()]
    if len(levels) < 2 or levels[0] != "hospital" or levels[-1] != "national":
        raise AffluentError("a network runs from 'hospital' to 'national', e.g. hospital,region,national")
    if len(set(levels)) != len(levels) or any(level not in LEVELS for level in levels):
        raise AffluentError(f"network levels are {', '.join(LEVELS)}, each at most once, in that order")
    if [lvl for lvl in LEVELS if lvl in levels] != levels:
        raise AffluentError(f"network levels must go upwards: {', '.join(LEVELS)}")
    if not 1 <= hospitals <= 9:
        raise AffluentError("a local network runs 1 to 9 hospitals")
    lower = [f"hospital{i}" for i in range(1, hospitals + 1)]
    clusters = list(lower)
    flows: list[Flow] = []
    for level in levels[1:]:
        flows.extend(Flow(source, level) for source in lower)
        clusters.append(level)
        lower = [level]
    return Topology(tuple(clusters), tuple(flows))


@dataclass(frozen=True, slots=True)
class ClusterPorts:
    kafka: int
    registry: int
    registry_management: int
    mirror_metrics: int


def cluster_ports(base_port: int, index: int) -> ClusterPorts:
    """Ten ports per cluster; the controller takes kafka+1 (LocalStack's rule)."""
    base = base_port + 10 * index
    return ClusterPorts(kafka=base, registry=base + 2, registry_management=base + 3, mirror_metrics=base + 4)


def mirror_properties(
    policy: str, target: str, sources: Sequence[str], bootstraps: Mapping[str, str], replication_factor: int
) -> str:
    """The MirrorMaker 2 file for the flows into `target`: the shared policy plus this target's clusters."""
    lines = [policy.replace("{target}", target).rstrip(), "", "# ---- Clusters and flows (generated)"]
    lines.append(f"clusters = {', '.join([*sources, target])}")
    lines.extend(f"{alias}.bootstrap.servers = {bootstraps[alias]}" for alias in [*sources, target])
    for source in sources:
        lines.append(f"{source}->{target}.enabled = true")
    rf = replication_factor
    lines += [
        f"replication.factor = {rf}",
        f"heartbeats.topic.replication.factor = {rf}",
        f"config.storage.replication.factor = {rf}",
        f"offset.storage.replication.factor = {rf}",
        f"status.storage.replication.factor = {rf}",
    ]
    return "\n".join(lines) + "\n"


def allowed_upper_topics(topology: Topology, cluster: str) -> set[str]:
    """The non-national topics an upper cluster may hold: MirrorMaker's own and the registry's."""
    allowed = {HEARTBEATS_TOPIC, "__consumer_offsets", *REGISTRY_TOPICS}
    for source in topology.sources_of(cluster):
        allowed.update(name.format(source=source) for name in MIRROR_INTERNAL_TOPICS)
        # A source's own heartbeats travel up too; even the identity policy prefixes them with the alias.
        allowed.add(f"{source}.{HEARTBEATS_TOPIC}")
    return allowed


def foreign_topics(topology: Topology, cluster: str, topics: Sequence[str]) -> list[str]:
    """Topics on an upper cluster that are neither national.* nor allowed infrastructure: must be empty."""
    allowed = allowed_upper_topics(topology, cluster)
    return sorted(t for t in topics if not t.startswith(NATIONAL_PREFIX) and t not in allowed)


def schema_parity(lower: Mapping[str, tuple[int, str]], upper: Mapping[str, tuple[int, str]]) -> list[str]:
    """National subject versions whose (id, schema) differ between two levels: upstream would decode wrongly.

    Both sides map "<subject> v<version>" -> (schema id, schema JSON). A version missing upstream is a
    mismatch too: the upper level could not decode its records at all.
    """
    problems = []
    for subject, (schema_id, text) in sorted(lower.items()):
        if not subject.startswith(NATIONAL_PREFIX):
            continue
        other = upper.get(subject)
        if other is None:
            problems.append(f"{subject}: missing upstream")
        elif other[0] != schema_id:
            problems.append(f"{subject}: id {schema_id} here, {other[0]} upstream")
        elif _canonical(other[1]) != _canonical(text):
            problems.append(f"{subject}: id {schema_id} names different schemas")
    return problems


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def national_schemas(registry: Registry) -> dict[str, tuple[int, str]]:
    """``<subject> v<version>`` -> (id, schema) of every version of every national subject in a registry.

    Every version, not only the latest: national subjects are FULL_TRANSITIVE and a topic may still
    hold records written with any of them.
    """
    out: dict[str, tuple[int, str]] = {}
    for subject in registry.subjects():
        if subject.startswith(NATIONAL_PREFIX):
            for version in registry.client.get_versions(subject):
                found = registry.client.get_version(subject, version)
                out[f"{subject} v{version}"] = (int(found.schema_id or 0), found.schema.schema_str or "")
    return out


def task_states(status_records: Sequence[tuple[bytes | None, bytes | None]]) -> dict[str, str]:
    """The latest state per Connect status key (``status-task-MirrorSourceConnector-0`` -> RUNNING)."""
    states: dict[str, str] = {}
    for key, value in status_records:
        if key is None:
            continue
        name = key.decode()
        if value is None:
            states.pop(name, None)
            continue
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        doc = doc.get("payload", doc) if isinstance(doc, dict) else doc
        if isinstance(doc, dict) and isinstance(doc.get("state"), str):
            states[name] = doc["state"]
    return states


class Network:
    """Fetch, start, check and stop the clusters of a network and the MirrorMaker processes between them."""

    def __init__(self, stack: StackSettings, net: NetworkSettings, topology: Topology | None = None) -> None:
        self.net = net
        self.state = net.state_dir
        recorded = self._recorded()
        if topology is None:
            if recorded is None:
                raise StackError(f"no network in {self.state}; start one with 'affluent network up'")
            topology = recorded
        elif recorded is not None and recorded != topology:
            raise StackError(
                f"{self.state} holds another network ({', '.join(recorded.clusters)}); run "
                "'affluent network down --wipe' first"
            )
        self.topology = topology
        self.ports = {alias: cluster_ports(net.base_port, i) for i, alias in enumerate(topology.clusters)}
        self.stacks = {
            alias: LocalStack(
                stack.model_copy(
                    update={
                        "state_dir": self.state / alias,
                        "kafka_port": ports.kafka,
                        "registry_port": ports.registry,
                        "registry_management_port": ports.registry_management,
                        "broker_heap": net.broker_heap,
                        "registry_heap": net.registry_heap,
                    }
                )
            )
            for alias, ports in self.ports.items()
        }
        self.mirror_home = stack.cache_dir / f"mirrormaker-{stack.kafka_version}"
        self.agent_jar = (
            stack.cache_dir / "jmx-agent" / f"jmx_prometheus_javaagent-{net.jmx_agent_version}.jar"
        )
        self.kafka_version = stack.kafka_version
        self.java_home = stack.java_home

    # ------------------------------------------------------------------ addresses
    def kafka(self, alias: str) -> KafkaSettings:
        return self.stacks[alias].kafka_settings()

    def registry(self, alias: str) -> Registry:
        return Registry(RegistrySettings(url=self.stacks[alias].registry_url))

    def mirror_dir(self, target: str) -> Path:
        """MirrorMaker's files live in the target cluster's folder: it is that level's process."""
        return self.stacks[target].state / "mirror"

    def metrics_url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.ports[target].mirror_metrics}/metrics"

    def _recorded(self) -> Topology | None:
        path = self.state / NETWORK_FILE
        return Topology.from_json(json.loads(path.read_text())) if path.exists() else None

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> None:
        """Kafka and the registry (LocalStack), then MirrorMaker 2 and the Prometheus JMX agent."""
        first = self.stacks[self.topology.clusters[0]]
        first.fetch()
        fetch_pom(
            self.net.deploy_dir / "mirror-pom.xml",
            self.kafka_version,
            self.mirror_home,
            "connect-mirror-*.jar",
            what=f"MirrorMaker 2 {self.kafka_version}",
        )
        if not self.agent_jar.exists():
            _run_maven(
                [
                    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                    f"-Dartifact=io.prometheus.jmx:jmx_prometheus_javaagent:{self.net.jmx_agent_version}",
                    f"-DoutputDirectory={self.agent_jar.parent}",
                ],
                what="the Prometheus JMX agent",
            )

    # ------------------------------------------------------------------ up
    def up(self, timeout_s: float = 180.0) -> None:
        """Clusters (in parallel), schemas at every level, national topics at the hospitals, then mirrors."""
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / NETWORK_FILE).write_text(json.dumps(self.topology.to_json()))
        self.fetch()
        with ThreadPoolExecutor(max_workers=len(self.stacks)) as pool:
            for future in [pool.submit(stack.up) for stack in self.stacks.values()]:
                future.result()
        self.register_schemas()
        for alias in self.topology.clusters:
            if not self.topology.sources_of(alias):  # the hospitals: where national topics are born
                ensure_topics(self.kafka(alias), [TopicSpec(t) for t in NATIONAL_TOPICS])
        for target in self.topology.targets:
            self.start_mirror(target)
        for target in self.topology.targets:
            self.wait_mirror(target, timeout_s)

    def register_schemas(self) -> None:
        """The catalog at every level, national first (an upper level knows an id before a lower one can
        write it), then the id check of every flow."""
        for alias in reversed(self.topology.clusters):
            register_all(self.registry(alias))
        for flow in self.topology.flows:
            problems = schema_parity(
                national_schemas(self.registry(flow.source)), national_schemas(self.registry(flow.target))
            )
            if problems:
                raise StackError(
                    f"schema ids differ between {flow.source} and {flow.target}, so records would decode "
                    f"wrongly upstream: {'; '.join(problems[:3])}"
                )

    def start_mirror(self, target: str) -> None:
        stack = self.stacks[target]
        home = self.mirror_dir(target)
        pid_file = home / "mirror.pid"
        if stack._alive(pid_file):
            return
        home.mkdir(parents=True, exist_ok=True)
        sources = self.topology.sources_of(target)
        props = home / "mm2.properties"
        props.write_text(
            mirror_properties(
                (self.net.deploy_dir / POLICY_FILE).read_text(),
                target,
                sources,
                {alias: self.stacks[alias].bootstrap_servers for alias in [*sources, target]},
                replication_factor=1,
            )
        )
        java = find_java(self.java_home, MIN_KAFKA_JAVA, "AFFLUENT_STACK__JAVA_HOME")
        port = self.ports[target].mirror_metrics
        cmd = [
            str(java),
            f"-Xms{self.net.mirror_heap}",
            f"-Xmx{self.net.mirror_heap}",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Daffluent.state={stack.state}",
            f"-javaagent:{self.agent_jar}=127.0.0.1:{port}:{self.net.deploy_dir / 'jmx-exporter.yaml'}",
            f"-Dlog4j2.configurationFile={stack.s.deploy_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={home / 'logs'}",
            "-cp",
            f"{self.mirror_home / 'libs'}/*",
            MIRROR_MAIN,
            str(props),  # before --clusters, which takes every following word as an alias
            "--clusters",
            target,
        ]
        stack._procs[pid_file] = _spawn(cmd, home / "logs" / "stdout.log", pid_file, cwd=home)

    def wait_mirror(self, target: str, timeout_s: float) -> None:
        """Ready when each flow's MirrorSourceConnector task reports RUNNING in its Connect status topic."""
        deadline = time.monotonic() + timeout_s
        log = self.mirror_dir(target) / "logs" / "stdout.log"
        pending = set(self.topology.sources_of(target))
        while pending:
            if self.stacks[target]._exited(self.mirror_dir(target) / "mirror.pid"):
                raise StackError(f"MirrorMaker into {target} exited during start-up; read {log}{_tail(log)}")
            for source in sorted(pending):
                states = task_states(self._read_all(target, f"mm2-status.{source}.internal"))
                if states.get("status-task-MirrorSourceConnector-0") == "RUNNING":
                    pending.discard(source)
            if pending and time.monotonic() > deadline:
                raise StackError(
                    f"MirrorMaker {', '.join(sorted(pending))} -> {target} did not run within "
                    f"{timeout_s:.0f} s; read {log}"
                )
            if pending:
                time.sleep(1.0)

    def _read_all(self, alias: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of a small topic (a Connect status topic), from the beginning to its end now."""
        consumer = make_consumer(self.kafka(alias), group_id="affluent-network-probe", logger=QUIET_LOGGER)
        try:
            md = consumer.list_topics(topic, timeout=5)
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None:
                return []
            ends = {}
            for p in meta.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if high > 0:
                    ends[p] = high
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            out: list[tuple[bytes | None, bytes | None]] = []
            deadline = time.monotonic() + 10
            while ends and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                out.append((msg.key(), msg.value()))
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                    ends.pop(msg.partition() or 0, None)
            return out
        except KafkaException:
            return []
        finally:
            consumer.close()

    # ------------------------------------------------------------------ one level at a time (faults)
    def stop_cluster(self, alias: str) -> None:
        """Crash one level's Kafka (SIGKILL, no controlled shutdown), as an outage would.

        Its registry stays up: it is only a client of that Kafka and plays no part in replication.
        """
        for node in self.stacks[alias].nodes:
            self.stacks[alias].kill_node(node.node_id)

    def start_cluster(self, alias: str) -> None:
        """Bring one level back and wait until it answers; MirrorMaker reconnects by itself."""
        self.stacks[alias].up()

    # ------------------------------------------------------------------ status / down
    def status(self) -> list[ComponentStatus]:
        rows: list[ComponentStatus] = []
        for alias, stack in self.stacks.items():
            rows.extend(
                ComponentStatus(f"{alias}/{r.name}", r.running, r.pid, r.address, r.log)
                for r in stack.status()
            )
            if self.topology.sources_of(alias):
                pid = stack._alive(self.mirror_dir(alias) / "mirror.pid")
                flows = "+".join(self.topology.sources_of(alias))
                rows.append(
                    ComponentStatus(
                        name=f"{alias}/mirrormaker",
                        running=pid is not None,
                        pid=pid,
                        address=f"{flows}->{alias} {self.metrics_url(alias)}",
                        log=self.mirror_dir(alias) / "logs" / "stdout.log",
                    )
                )
        return rows

    def down(self, wipe: bool = False) -> None:
        """MirrorMaker first (a client of both sides), then every cluster."""
        for target in self.topology.targets:
            _stop(self.mirror_dir(target) / "mirror.pid", grace_s=30)
        with ThreadPoolExecutor(max_workers=len(self.stacks)) as pool:
            for future in [pool.submit(stack.down, wipe) for stack in self.stacks.values()]:
                future.result()
        if wipe:
            (self.state / NETWORK_FILE).unlink(missing_ok=True)
