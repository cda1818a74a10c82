"""The embedded local stack: Apache Kafka (KRaft) and a Confluent-API schema registry from Maven Central.

No Docker engine is assumed. Jars are resolved with Maven into a cache outside the repository, the
processes run detached (they outlive the CLI call that started them) with pid files and logs in the
state folder, and readiness is checked with real protocol round-trips, never by a sleep.

Every failure is a :class:`StackError` that names the log to read, so a broken start ends with a
sentence and an exit code rather than a hang or a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from affluent.core.errors import StackError
from affluent.core.kafka import QUIET_LOGGER
from affluent.core.settings import KafkaSettings, StackSettings

STACK_FILE = "stack.json"
MIN_KAFKA_JAVA = 17
MIN_REGISTRY_JAVA = 21


@dataclass(frozen=True, slots=True)
class Node:
    """One KRaft node (broker and controller in the same process)."""

    node_id: int
    host: str
    port: int
    controller_port: int
    home: Path

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    log: Path


class LocalStack:
    """Fetch, start, check and stop the local Kafka cluster (1 or 3 nodes) and its registry."""

    def __init__(self, settings: StackSettings, brokers: int = 1) -> None:
        if brokers not in (1, 3):
            raise StackError(f"the local stack runs 1 broker (default) or 3 (fault tests), not {brokers}")
        self.s = settings
        self.state = settings.state_dir
        self.brokers = brokers
        self.nodes = [
            Node(
                node_id=i,
                host=settings.host,
                port=settings.kafka_port + 2 * (i - 1),
                controller_port=settings.kafka_port + 2 * (i - 1) + 1,
                home=self.state / f"kafka-{i}",
            )
            for i in range(1, brokers + 1)
        ]
        self.kafka_home = settings.cache_dir / f"kafka-{settings.kafka_version}"
        self.registry_home = settings.cache_dir / f"apicurio-registry-{settings.registry_version}"
        self.registry_dir = self.state / "registry"
        # Processes started by this object: right after fork /proc shows python, not java, so the
        # start-up wait asks the Popen handle whether the child is still there.
        self._procs: dict[Path, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ addresses
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def registry_url(self) -> str:
        return f"http://{self.s.host}:{self.s.registry_port}/apis/ccompat/v7"

    def kafka_settings(self) -> KafkaSettings:
        """Client settings matching this stack (replication as the cluster size allows)."""
        rf = 3 if self.brokers == 3 else 1
        return KafkaSettings(
            bootstrap_servers=self.bootstrap_servers,
            replication_factor=rf,
            min_insync_replicas=2 if rf == 3 else None,
        )

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> None:
        """Resolve the jars once; later calls find the completion markers and return at once."""
        self._fetch_kafka()
        self._fetch_registry()

    def _fetch_kafka(self) -> None:
        fetch_pom(
            self.s.deploy_dir / "kafka-pom.xml",
            self.s.kafka_version,
            self.kafka_home,
            "kafka_2.13-*.jar",
            what=f"Apache Kafka {self.s.kafka_version}",
        )

    def _fetch_registry(self) -> None:
        marker = self.registry_home / ".complete"
        if marker.exists():
            return
        shutil.rmtree(self.registry_home, ignore_errors=True)
        download = self.s.cache_dir / "downloads"
        download.mkdir(parents=True, exist_ok=True)
        version = self.s.registry_version
        _run_maven(
            [
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                f"-DoutputDirectory={download}",
            ],
            what=f"Apicurio Registry {version}",
        )
        archive = download / f"apicurio-registry-app-{version}-all.tar.gz"
        if not archive.exists():
            raise StackError(f"Maven finished but {archive} is missing")
        self.registry_home.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(self.registry_home, filter="data")
        if not (self.registry_home / "quarkus-run.jar").exists():
            raise StackError(f"{archive} does not contain quarkus-run.jar")
        archive.unlink()
        marker.touch()

    # ------------------------------------------------------------------ up
    def up(self, registry: bool = True) -> None:
        """Start what is not running yet and wait until it is healthy (idempotent)."""
        self._check_layout()
        kafka_java = find_java(self.s.java_home, MIN_KAFKA_JAVA, "AFFLUENT_STACK__JAVA_HOME")
        registry_java = (
            find_java(self.s.registry_java_home, MIN_REGISTRY_JAVA, "AFFLUENT_STACK__REGISTRY_JAVA_HOME")
            if registry
            else None
        )
        self.fetch()
        cluster_id = self._cluster_id(kafka_java)
        started = []
        for node in self.nodes:
            if self._alive(node.pid_file):
                continue
            for port in (node.port, node.controller_port):
                _require_free_port(self.s.host, port, "AFFLUENT_STACK__KAFKA_PORT")
            self._start_node(node, kafka_java, cluster_id)
            started.append(node)
        self._wait_kafka(started)
        if registry_java is not None:
            if not self._alive(self.registry_dir / "registry.pid"):
                _require_free_port(self.s.host, self.s.registry_port, "AFFLUENT_STACK__REGISTRY_PORT")
                _require_free_port(
                    self.s.host, self.s.registry_management_port, "AFFLUENT_STACK__REGISTRY_MANAGEMENT_PORT"
                )
                self._start_registry(registry_java)
            self._wait_registry()

    def _check_layout(self) -> None:
        """Refuse to reuse a state folder formatted for another cluster size: its metadata would not fit."""
        self.state.mkdir(parents=True, exist_ok=True)
        meta = self.state / STACK_FILE
        if meta.exists():
            recorded = json.loads(meta.read_text())
            if recorded.get("brokers") != self.brokers:
                raise StackError(
                    f"{self.state} holds a {recorded.get('brokers')}-broker cluster; run "
                    f"'affluent stack down --wipe' first or use another AFFLUENT_STACK__STATE_DIR"
                )

    def _cluster_id(self, java: Path) -> str:
        meta = self.state / STACK_FILE
        if meta.exists():
            return str(json.loads(meta.read_text())["cluster_id"])
        result = subprocess.run(
            [str(java), "-cp", f"{self.kafka_home / 'libs'}/*", "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise StackError(f"kafka StorageTool random-uuid failed: {result.stderr.strip()[-400:]}")
        cluster_id = lines[-1].strip()
        meta.write_text(json.dumps({"brokers": self.brokers, "cluster_id": cluster_id}))
        return cluster_id

    def _server_properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
        rf = len(self.nodes)
        isr = 2 if rf == 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{node.host}:{node.port},CONTROLLER://{node.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": node.data_dir,
            "num.partitions": 3,
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "log.retention.hours": 168,
            "auto.create.topics.enable": "false",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _start_node(self, node: Node, java: Path, cluster_id: str) -> None:
        node.log_dir.mkdir(parents=True, exist_ok=True)
        props = node.home / "server.properties"
        props.write_text(self._server_properties(node))
        classpath = f"{self.kafka_home / 'libs'}/*"
        jvm = [
            str(java),
            f"-Dlog4j2.configurationFile={self.s.deploy_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.log_dir}",
            "-cp",
            classpath,
        ]
        if not (node.data_dir / "meta.properties").exists():
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise StackError(
                    f"formatting KRaft storage of node {node.node_id} failed: {fmt.stderr.strip()[-400:]}"
                )
        cmd = [
            str(java),
            f"-Xms{self.s.broker_heap}",
            f"-Xmx{self.s.broker_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            *jvm[1:],
            "kafka.Kafka",
            str(props),
        ]
        self._procs[node.pid_file] = _spawn(cmd, node.log_dir / "stdout.log", node.pid_file, cwd=node.home)

    def start_node(self, node_id: int) -> None:
        """Restart one node of an already formatted cluster (fault tests restart a killed broker)."""
        node = self.nodes[node_id - 1]
        if self._alive(node.pid_file):
            return
        java = find_java(self.s.java_home, MIN_KAFKA_JAVA, "AFFLUENT_STACK__JAVA_HOME")
        self._start_node(node, java, self._cluster_id(java))

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one broker, as a crash would: no controlled shutdown, no flush."""
        node = self.nodes[node_id - 1]
        pid = self._alive(node.pid_file)
        if pid:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        node.pid_file.unlink(missing_ok=True)

    def stop_registry(self, grace_s: float = 30) -> None:
        """Stop the registry alone (fault tests take it away while traffic flows; 0 s: SIGKILL at once)."""
        _stop(self.registry_dir / "registry.pid", grace_s=grace_s)

    def start_registry(self) -> None:
        """Start the registry again and wait until it answers (its schemas are kept in Kafka)."""
        if not self._alive(self.registry_dir / "registry.pid"):
            self._start_registry(
                find_java(self.s.registry_java_home, MIN_REGISTRY_JAVA, "AFFLUENT_STACK__REGISTRY_JAVA_HOME")
            )
        self._wait_registry()

    def _wait_kafka(self, started: list[Node]) -> None:
        deadline = time.monotonic() + self.s.start_timeout_s
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "socket.timeout.ms": 2000,
            "logger": QUIET_LOGGER,
        }
        admin = AdminClient(conf)
        while True:
            for node in started:
                if self._exited(node.pid_file):
                    raise StackError(
                        f"Kafka node {node.node_id} exited during start-up; read "
                        f"{node.log_dir / 'server.log'} and {node.log_dir / 'stdout.log'}"
                        f"{_tail(node.log_dir / 'stdout.log')}"
                    )
            try:
                md = admin.list_topics(timeout=2)
                if len(md.brokers) >= len(self.nodes):
                    return
            except KafkaException:
                pass
            if time.monotonic() > deadline:
                logs = ", ".join(str(n.log_dir / "server.log") for n in self.nodes)
                raise StackError(
                    f"Kafka did not become ready within {self.s.start_timeout_s:.0f} s; read {logs}"
                )
            time.sleep(0.5)

    def _start_registry(self, java: Path) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(java),
            f"-Xms{min_heap(self.s.registry_heap)}",
            f"-Xmx{self.s.registry_heap}",
            "-XX:+UseSerialGC",
            f"-Daffluent.state={self.state}",
            f"-Dquarkus.http.host={self.s.host}",
            f"-Dquarkus.http.port={self.s.registry_port}",
            f"-Dquarkus.management.host={self.s.host}",
            f"-Dquarkus.management.port={self.s.registry_management_port}",
            "-Dquarkus.http.access-log.enabled=false",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={self.bootstrap_servers}",
            "-jar",
            str(self.registry_home / "quarkus-run.jar"),
        ]
        pid_file = self.registry_dir / "registry.pid"
        self._procs[pid_file] = _spawn(cmd, self.registry_dir / "registry.log", pid_file, self.registry_dir)

    def _wait_registry(self) -> None:
        deadline = time.monotonic() + self.s.start_timeout_s
        log = self.registry_dir / "registry.log"
        while True:
            if self._exited(self.registry_dir / "registry.pid"):
                raise StackError(f"the schema registry exited during start-up; read {log}{_tail(log)}")
            if registry_ready(self.registry_url):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the schema registry did not answer within {self.s.start_timeout_s:.0f} s; read {log}"
                )
            time.sleep(0.5)

    # ------------------------------------------------------------------ status / down
    def status(self) -> list[ComponentStatus]:
        out = [
            ComponentStatus(
                name=f"kafka-{n.node_id}",
                running=self._alive(n.pid_file) is not None,
                pid=self._alive(n.pid_file),
                address=n.bootstrap,
                log=n.log_dir / "server.log",
            )
            for n in self.nodes
        ]
        reg_pid = self._alive(self.registry_dir / "registry.pid")
        out.append(
            ComponentStatus(
                name="schema-registry",
                running=reg_pid is not None,
                pid=reg_pid,
                address=self.registry_url,
                log=self.registry_dir / "registry.log",
            )
        )
        return out

    def down(self, wipe: bool = False) -> None:
        """Stop the registry first (it is a Kafka client), then the brokers with a controlled shutdown."""
        _stop(self.registry_dir / "registry.pid", grace_s=30)
        pids = [(n.pid_file, self._alive(n.pid_file)) for n in self.nodes]
        for _, pid in pids:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for pid_file, pid in pids:
            if pid and not _wait_gone(pid, 60):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
            pid_file.unlink(missing_ok=True)
        if wipe:
            shutil.rmtree(self.state, ignore_errors=True)

    def _exited(self, pid_file: Path) -> bool:
        proc = self._procs.get(pid_file)
        if proc is not None:
            return proc.poll() is not None
        return self._alive(pid_file) is None

    def _alive(self, pid_file: Path) -> int | None:
        """The pid in pid_file if that process is alive and is ours (guards against pid reuse)."""
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if stat.split(") ", 1)[-1].startswith("Z"):
            return None
        return pid if str(self.state).encode() in cmdline else None


# ---------------------------------------------------------------------- helpers
def registry_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_java(home: Path | None, minimum: int, env_name: str) -> Path:
    """A java binary of at least `minimum`: the configured home, then JAVA_HOME/PATH, then /usr/lib/jvm."""
    candidates: list[Path] = []
    if home is not None:
        candidates.append(home / "bin" / "java")
    else:
        if os.environ.get("JAVA_HOME"):
            candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path))
        jvm_root = Path("/usr/lib/jvm")
        if jvm_root.is_dir():
            candidates.extend(sorted(jvm_root.glob("*/bin/java"), reverse=True))
    seen: list[str] = []
    for java in candidates:
        version = java_major(java)
        if version is None:
            continue
        seen.append(f"{java} ({version})")
        if version >= minimum:
            return java
    found = "; found: " + ", ".join(seen) if seen else "; no java found"
    raise StackError(f"Java {minimum}+ is needed; set {env_name} to a JDK home or install one{found}")


def java_major(java: Path) -> int | None:
    if not (java.is_file() and os.access(java, os.X_OK)):
        return None
    release = java.resolve().parent.parent / "release"
    text = ""
    if release.exists():
        text = release.read_text(errors="replace")
    else:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [str(java), "-version"], capture_output=True, text=True, timeout=20, check=False
            ).stderr
    match = re.search(r'(?:JAVA_VERSION=|version )"(1\.)?(\d+)', text)
    return int(match.group(2)) if match else None


def min_heap(heap: str) -> str:
    """Initial heap: a quarter of the maximum, so an idle registry does not claim its whole heap."""
    match = re.fullmatch(r"(\d+)([mMgG])", heap)
    if not match:
        return heap
    size = int(match.group(1)) * (1024 if match.group(2).lower() == "g" else 1)
    return f"{max(64, size // 4)}m"


def _require_free_port(host: str, port: int, env_name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            raise StackError(
                f"port {port} on {host} is already in use by another program; stop it or choose "
                f"another port ({env_name})"
            )


def fetch_pom(pom: Path, kafka_version: str, home: Path, jar_glob: str, what: str) -> None:
    """Resolve a pom's run-time dependencies into ``home/libs`` once; a marker makes later calls free."""
    marker = home / ".complete"
    if marker.exists():
        return
    libs = home / "libs"
    shutil.rmtree(home, ignore_errors=True)
    libs.mkdir(parents=True)
    _run_maven(
        [
            "-f",
            str(pom),
            f"-Dkafka.version={kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        what=what,
    )
    if not any(libs.glob(jar_glob)):
        raise StackError(f"Maven finished but no {jar_glob} is in {libs}")
    marker.touch()


def _run_maven(args: list[str], what: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"Maven (mvn) is needed to fetch {what} from Maven Central; install maven")
    result = subprocess.run([mvn, "-B", "-q", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() if "ERROR" in line][:3]
        raise StackError(f"fetching {what} with Maven failed: {' | '.join(errors)[:600]}")


def _spawn(cmd: list[str], log: Path, pid_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _stop(pid_file: Path, grace_s: float) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    if not _wait_gone(pid, grace_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)
    pid_file.unlink(missing_ok=True)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.split(") ", 1)[-1].startswith("Z"):
            return True
        time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  last lines:\n    " + "\n    ".join(line[:300] for line in text) if text else ""
