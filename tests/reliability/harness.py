"""What every fault scenario shares: the three-broker cluster with its own registry, the pipeline as real
processes (MLLP door, normalize, pseudonymize), the hospital's resending lanes, and the accounting.

Scenarios share one cluster (module fixture), so each starts its worker groups at the current end of
their input topics and reads national records from the positions it noted before sending: it sees its
own records only. Pass (design §7), the same for every scenario: every message the senders saw
acknowledged reaches its canonical events (or ``dlq.normalize``) and every national record those events
imply is on its national topic; after deduplication by ``event_id`` no canonical or national record
appears twice with different content; each patient's national records keep the order in which the
hospital sent them; no record was dead-lettered for want of a registry; nothing needed a manual action.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, make_admin, make_consumer
from affluent.core.settings import KafkaSettings
from affluent.core.topics import (
    ACK_CACHE_CONFIG,
    COMPACTED_CONFIG,
    CONTROL_ACK,
    CONTROL_DEVICES,
    CONTROL_OPPOSITION,
    DLQ_INGEST,
    INGEST_HL7V2_RAW,
)
from affluent.local.stack import LocalStack
from affluent.sim import synthetic
from affluent.sim.accounting import collect
from bench.report import markdown_table
from connectors.mllp.intake import Accepted, IntakePolicy, assess
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS
from schemas.registry import Registry, decode
from streams.cohort.definition import load_cohorts
from streams.cohort.expect import CohortTracker
from streams.normalize.worker import RAW_TOPICS
from streams.pseudonymize.worker import KEY_FILE_ENV, build_feeds, load_keys
from tests.support.pipeline import (
    KEY_FILE,
    ends,
    fetch,
    free_port,
    pseudonymize_sources,
    start_group_at,
    stop,
)
from tests.support.resilient import SenderLog

LANES = 4
PATIENTS = 40
FULL = os.environ.get("AFFLUENT_CHAOS_FULL") == "1"  # `make chaos`: full durations; CI: reduced
# The session timeout (45 s by default) is how long a SIGKILLed worker's partitions wait for it; the
# suite runs the workers with 15 s, as an operator who wants fast fail-over would.
SESSION_TIMEOUT_MS = "15000"
METRICS_PORTS = {
    "normalize": "AFFLUENT_STREAMS__METRICS_PORT",
    "pseudonymize": "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT",
}
# What a scenario reads back (raw first), from the positions it noted before sending.
OUTPUTS = (INGEST_HL7V2_RAW, *CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE)
# Where two receptions of the same message may differ: when and at which raw offset it was received.
RECEPTION_FIELDS = ("envelope.ingest_time", "envelope.lineage.")
# Dead letters only a registry failure (or corrupt bytes, which the suite never sends) can produce.
REGISTRY_REASONS = frozenset({"undecodable_raw", "undecodable_canonical"})


@dataclass
class Cluster:
    stack: LocalStack
    kafka: KafkaSettings
    registry: Registry


def pipeline_topics(groups: list[str]) -> list[TopicSpec]:
    return [
        *(TopicSpec(t) for t in (*RAW_TOPICS, DLQ_INGEST, *CANONICAL_TOPICS, DLQ_NORMALIZE)),
        *(TopicSpec(t) for t in (*NATIONAL_TOPICS, DLQ_PSEUDONYMIZE)),
        TopicSpec(CONTROL_ACK, config=ACK_CACHE_CONFIG),
        TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG),
        TopicSpec(CONTROL_DEVICES, config=COMPACTED_CONFIG),
    ]


def create_topics(kafka: KafkaSettings, specs: list[TopicSpec]) -> None:
    for attempt in range(15):  # a just-formed 3-node quorum may drop the first admin requests
        try:
            ensure_topics(kafka, specs)
            return
        except KafkaUnavailable:
            assert attempt < 14, "the cluster never accepted the topics"
            time.sleep(2)


def all_ends(kafka: KafkaSettings, topics: Sequence[str], timeout_s: float = 60) -> list[TopicPartition]:
    """:func:`ends` of every topic: on a cluster formed a moment ago, a topic just created may not be in
    the metadata yet (no partitions), which ``ends`` would silently skip."""
    deadline = time.monotonic() + timeout_s
    while True:
        positions = ends(kafka, list(topics))
        if {tp.topic for tp in positions} == set(topics):
            return positions
        assert time.monotonic() < deadline, "topics without partitions in the metadata"
        time.sleep(0.5)


def leader_of(kafka: KafkaSettings, topic: str, partition: int) -> int:
    admin = make_admin(kafka)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=10).topics.get(topic)
        if md is not None and partition in md.partitions and md.partitions[partition].leader >= 0:
            return int(md.partitions[partition].leader)
        time.sleep(0.2)
    raise AssertionError(f"{topic}[{partition}] has no leader")


class Process:
    """One affluent process the suite can SIGKILL and start again with the same environment."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.retired = False  # killed on purpose and left dead (its peers take over)

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} was not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_lines(self, text: str) -> int:
        """How many lines of this process's logs (every start) contain ``text``."""
        return sum(
            line.count(text.encode())
            for log in self.logs.glob(f"{self.name}-*.log")
            for line in log.open("rb")
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            stop(self.proc)


async def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def read_from(kafka: KafkaSettings, start: list[TopicPartition], quiet_s: float = 3.0) -> list[Any]:
    """Every record after ``start`` in partition order: (topic, partition, key, value)."""
    consumer = make_consumer(kafka, group_id=f"chaos-read-{uuid.uuid4().hex[:8]}")
    consumer.assign(start)
    out = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.topic(), msg.partition(), msg.key(), msg.value()))
            last = time.monotonic()
    finally:
        consumer.close()
    return out


@dataclass
class Traffic:
    """A hospital's messages, split into lanes that each own their patients (so order is checkable)."""

    batch: list[bytes]
    lanes: list[list[bytes]]
    order: dict[bytes, int]

    @classmethod
    def make(cls, run: str, messages: int) -> Traffic:
        batch = synthetic.messages(messages, seed=random.Random(run).randrange(10**6), patients=PATIENTS)
        lanes: list[list[bytes]] = [[] for _ in range(LANES)]
        for n, payload in enumerate(batch):
            lanes[(n % PATIENTS) % LANES].append(payload)  # a patient always goes through the same lane
        return cls(batch, lanes, {payload: n for n, payload in enumerate(batch)})


class Pipeline:
    """The MLLP door and both workers as processes of their own, in fresh groups on the shared cluster."""

    def __init__(self, cluster: Cluster, logs: Path) -> None:
        self.cluster, self.kafka, self.logs = cluster, cluster.kafka, logs
        self.run = uuid.uuid4().hex[:6]
        self.groups = [f"chaos-normalize-{self.run}", f"chaos-pseudonymize-{self.run}"]
        self.door_port = free_port()
        self.door_metrics_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_")},
            "AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "AFFLUENT_KAFKA__REPLICATION_FACTOR": "3",
            "AFFLUENT_KAFKA__MIN_INSYNC_REPLICAS": "2",
            "AFFLUENT_REGISTRY__URL": cluster.registry.url,
            "AFFLUENT_MLLP__PORT": str(self.door_port),
            "AFFLUENT_MLLP__METRICS_PORT": str(self.door_metrics_port),
            "AFFLUENT_STREAMS__NORMALIZE_GROUP": self.groups[0],
            "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
            "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": self.groups[1],
            "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(free_port()),
            "AFFLUENT_STREAMS__SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS,
            KEY_FILE_ENV: str(KEY_FILE),
        }
        self.procs = {name: self.process(name, name) for name in ("mllp", "normalize", "pseudonymize")}
        self.positions: list[TopicPartition] = []  # every output topic's end before the scenario
        self.phases: dict[str, float] = {}
        self.clock = time.monotonic()

    def process(self, name: str, command: str, **env: str) -> Process:
        return Process(name, [sys.executable, "-m", "affluent.cli", command], {**self.env, **env}, self.logs)

    def add_worker(self, name: str, command: str) -> Process:
        """Another worker of the same group (its own metrics port), not started yet; add it after
        :meth:`start`, which starts every process it knows."""
        self.procs[name] = self.process(name, command, AFFLUENT_STREAMS__METRICS_PORT=str(free_port()))
        return self.procs[name]

    async def wait_serving(self, name: str, timeout_s: float = 120) -> None:
        """Until the worker's /metrics answers: it is built (schemas registered) and its loop runs."""
        port = self.procs[name].env[METRICS_PORTS[name.split("-")[0]]]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
                return
            except OSError:
                assert time.monotonic() < deadline, f"{name} never served /metrics"
                await asyncio.sleep(0.3)

    def phase(self, name: str) -> None:
        self.phases[name] = time.monotonic() - self.clock - sum(self.phases.values())

    async def start(self) -> None:
        create_topics(self.kafka, pipeline_topics(self.groups))
        start_group_at(self.kafka, self.groups[0], all_ends(self.kafka, RAW_TOPICS))
        start_group_at(self.kafka, self.groups[1], all_ends(self.kafka, pseudonymize_sources(self.kafka)))
        self.positions = all_ends(self.kafka, [*OUTPUTS, *NATIONAL_TOPICS])
        for p in self.procs.values():
            p.start()
        await wait_port(self.door_port)
        for name in ("normalize", "pseudonymize"):  # built, schemas registered: faults start now
            await self.wait_serving(name)
        self.phase("start")

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()

    def door_outcomes(self) -> Counter[str]:
        """The door's own count of messages by outcome (stored, duplicate, …), from its /metrics."""
        text = fetch(f"http://127.0.0.1:{self.door_metrics_port}/metrics")
        out: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("affluent_mllp_messages_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] += int(float(line.rsplit(" ", 1)[1]))
        return out

    async def send(
        self, traffic: Traffic, lane: Callable[[list[bytes]], Awaitable[None]], *faults: Any
    ) -> None:
        await asyncio.gather(*faults, *(lane(payloads) for payloads in traffic.lanes))
        self.phase("send")


@dataclass
class Versions:
    """How the distinct versions of each event id differ. A message the door stored twice (it was
    killed after the raw record was durable, before the ACK-cache entry was) is *re-received*: same
    event ids, same content, another reception time and raw offset (design §4: ids collapse it). Any
    other difference is a conflict."""

    rereceived: int = 0
    conflicting: int = 0
    fields: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, versions: dict[str, list[Any]]) -> Versions:
        out = cls()
        for records in versions.values():
            differ = {f for other in records[1:] for f in differing_fields(records[0], other)}
            out.fields.update(differ)
            if any(not f.startswith(RECEPTION_FIELDS) for f in differ):
                out.conflicting += 1
            elif differ:
                out.rereceived += 1
        return out


@dataclass
class Reported:
    """One scenario's printed accounting and its verdict, for the report ``make chaos`` writes."""

    title: str
    rows: list[tuple[str, str]]
    verdict: str = "not checked"


# Scenarios of this run, in order (the suite's module fixture writes them out at the end).
REPORTED: list[Reported] = []


def chaos_report(started: str, reported: Sequence[Reported]) -> str:
    """The fault suite's section of BENCHMARKS.md: one accounting table per scenario (counts only)."""
    lines = [
        "## Fault suite (`make chaos`)",
        "",
        f"Written by `make chaos` on {started} UTC, its own run (not the `make bench` run above): three "
        "KRaft brokers (RF 3, min ISR 2) with their own registry on this machine, the MLLP door and both "
        f"workers as processes, {LANES} resending hospital lanes, {PATIENTS} patients. Pass: every "
        "acknowledged message reaches its national topics or a dead-letter topic; after deduplication "
        "by event id none differs in content; each patient's national records keep their order; no "
        "manual action.",
        "",
    ]
    for scenario in reported:
        lines += [
            f"**{scenario.title}** — {scenario.verdict}",
            "",
            markdown_table(["", ""], [list(row) for row in scenario.rows], align=["l", "l"]),
            "",
        ]
    return "\n".join(lines)


@dataclass
class Accounting:
    """Where one scenario's acknowledged messages ended up (counts only: safe to print)."""

    sent: int
    acked: int
    outcomes: Counter[str]
    missing_raw: int
    missing_canonical: int
    canonical: int
    canonical_versions: Versions
    dead_normalize: Counter[str]
    dead_pseudonymize: Counter[str]
    national_expected: int
    national_found: int
    copies: int
    national_versions: Versions
    out_of_order: int
    alive: dict[str, bool]
    extra: list[tuple[str, str]] = field(default_factory=list)
    report: Reported | None = None

    def print(self, title: str, faults: list[str], pipe: Pipeline, out: Any) -> None:
        table = [
            ("faults injected", "; ".join(faults)),
            ("messages sent / acknowledged", f"{self.sent} / {self.acked}"),
            ("sender outcomes", ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))),
            ("acknowledged but not in the raw topic", str(self.missing_raw)),
            ("acknowledged but no canonical event or dead letter", str(self.missing_canonical)),
            ("canonical events", str(self.canonical)),
            ("canonical event ids re-received (reception differs)", str(self.canonical_versions.rereceived)),
            ("canonical event ids with different content", str(self.canonical_versions.conflicting)),
            ("dead letters (dlq.normalize)", _counts(self.dead_normalize)),
            ("dead letters (dlq.pseudonymize)", _counts(self.dead_pseudonymize)),
            ("national records expected / found", f"{self.national_expected} / {self.national_found}"),
            ("national copies of an event id already seen", str(self.copies)),
            ("national event ids re-received (reception differs)", str(self.national_versions.rereceived)),
            ("national event ids with different content", str(self.national_versions.conflicting)),
            (
                "fields that differ between versions",
                _counts(self.canonical_versions.fields + self.national_versions.fields),
            ),
            ("patients' streams out of order", str(self.out_of_order)),
            ("seconds: " + ", ".join(pipe.phases), ", ".join(f"{v:.0f}" for v in pipe.phases.values())),
            ("processes (re)started", ", ".join(f"{n} x{p.starts}" for n, p in pipe.procs.items())),
            *self.extra,
        ]
        with out.disabled():
            print(f"\n\nFault suite accounting: {title}")
            for label, value in table:
                print(f"  {label:<52} {value}")
        self.report = Reported(title, table)
        REPORTED.append(self.report)

    def check(self) -> None:
        if self.report is not None:
            self.report.verdict = "**failed**"  # until every assertion below has held
        self._check()
        if self.report is not None:
            self.report.verdict = "passed"

    def _check(self) -> None:
        assert self.acked == self.sent, "every message is eventually acknowledged (the senders resend)"
        assert not self.missing_canonical, f"{self.missing_canonical} acknowledged messages lost"
        assert self.national_found == self.national_expected, "national records missing"
        conflicts = self.canonical_versions.conflicting + self.national_versions.conflicting
        assert not conflicts, "an event id with different content"
        assert not self.out_of_order, "a patient's national records out of order"
        registry_dead = [r for r in (*self.dead_normalize, *self.dead_pseudonymize) if r in REGISTRY_REASONS]
        assert not registry_dead, f"dead letters for want of a registry: {registry_dead}"
        assert all(self.alive.values()), self.alive


def differing_fields(a: Any, b: Any, path: str = "") -> set[str]:
    """The dotted paths where two decoded records differ: names only, never values (safe to print)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {f for k in a.keys() | b.keys() for f in differing_fields(a.get(k), b.get(k), f"{path}.{k}")}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {f for x, y in zip(a, b, strict=True) for f in differing_fields(x, y, f"{path}[]")}
    return set() if a == b else {path.lstrip(".")}


def _counts(counter: Counter[str], total: int | None = None) -> str:
    shown = sum(counter.values()) if total is None else total
    return f"{shown}" + (f" ({', '.join(f'{k} {v}' for k, v in counter.items())})" if counter else "")


def _raw_id(record: dict[str, Any]) -> str:
    return str(record["envelope"]["lineage"]["raw_id"] if "envelope" in record else record["raw_id"])


async def account(pipe: Pipeline, traffic: Traffic, log: SenderLog) -> Accounting:
    """Match every acknowledged message to its canonical events or dead letter, derive the national
    records those events imply (the same feeds as the worker), and read what the national topics hold."""
    kafka, registry = pipe.kafka, pipe.cluster.registry
    raw_ids = {}
    for payload in log.acked:
        outcome = assess(payload, IntakePolicy())
        assert isinstance(outcome, Accepted)
        raw_ids[outcome.raw_id] = traffic.order[payload]
    found = await asyncio.to_thread(
        collect, kafka, registry, OUTPUTS[1:], set(raw_ids), 240.0, start=pipe.positions
    )
    dead_pseudonymize = found.pop(DLQ_PSEUDONYMIZE, [])
    accounted = {_raw_id(r) for records in found.values() for r in records}
    missing_canonical = set(raw_ids) - accounted
    in_raw = (
        await asyncio.to_thread(
            collect, kafka, registry, [INGEST_HL7V2_RAW], missing_canonical, 20.0, start=pipe.positions
        )
        if missing_canonical
        else {}
    )
    missing_raw = missing_canonical - {str(r["raw_id"]) for rs in in_raw.values() for r in rs}
    pipe.phase("canonical")

    canonical_versions: dict[str, list[Any]] = defaultdict(list)
    feeds = build_feeds(load_keys({k: v for k, v in pipe.env.items() if k.startswith("AFFLUENT_PSEUDO_KEY")}))
    # A cohort-scoped destination (INCa) gets what the cohort stage's decision forwards or releases.
    tracker = CohortTracker(load_cohorts(("hdh", "inca")))
    by_destination = {f.destination: f for f in feeds}
    expected: dict[str, tuple[str, int]] = {}  # national event id → topic, message number
    for topic, records in found.items():
        if not topic.startswith("canonical."):
            continue
        for record in records:
            event_id = str(record["envelope"]["event_id"])
            if record not in canonical_versions[event_id]:
                canonical_versions[event_id].append(record)
            kind = topic.removeprefix("canonical.")
            due = [(f, kind, record) for f in feeds if f.destination not in tracker.scoped]
            due += [(by_destination[d], k, r) for d, k, r in tracker.see(kind, record)]
            for feed, due_kind, due_record in due:
                national = feed.apply(due_kind, due_record)
                if national is not None:
                    expected[str(national.record["envelope"]["event_id"])] = (
                        national.topic,
                        raw_ids[_raw_id(due_record)],
                    )
    # Wait until every expected national record is there (or the timeout), then read them all.
    national = await asyncio.to_thread(
        collect,
        kafka,
        registry,
        sorted(NATIONAL_TOPICS),
        set(expected),
        240.0,
        None,
        3.0,
        None,
        lambda record: str(record["envelope"]["event_id"]),
        pipe.positions,
    )
    seen = {str(r["envelope"]["event_id"]) for rs in national.values() for r in rs}
    pipe.phase("national")
    national_start = [tp for tp in pipe.positions if tp.topic in NATIONAL_TOPICS]
    records = await asyncio.to_thread(read_from, kafka, national_start)

    # Duplicates may exist (at-least-once); with different content, never. Per patient, in order.
    national_versions: dict[str, list[Any]] = defaultdict(list)
    sequence: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    copies = 0
    for topic, _partition, key, value in records:
        record = decode(registry, value)
        event_id = str(record["envelope"]["event_id"])
        if event_id not in expected:
            continue
        if event_id in national_versions:
            copies += 1
        else:
            sequence[(topic, key)].append(expected[event_id][1])
        if record not in national_versions[event_id]:
            national_versions[event_id].append(record)
    return Accounting(
        sent=len(traffic.batch),
        acked=len(log.acked),
        outcomes=log.outcomes,
        missing_raw=len(missing_raw),
        missing_canonical=len(missing_canonical),
        canonical=sum(len(v) for k, v in found.items() if k.startswith("canonical.")),
        canonical_versions=Versions.of(canonical_versions),
        dead_normalize=Counter(str(r["reason_code"]) for r in found.get(DLQ_NORMALIZE, [])),
        dead_pseudonymize=Counter(str(r["reason_code"]) for r in dead_pseudonymize),
        national_expected=len(expected),
        national_found=len(set(expected) & seen),
        copies=copies,
        national_versions=Versions.of(national_versions),
        out_of_order=sum(1 for seq in sequence.values() if seq != sorted(seq)),
        alive={name: p.alive for name, p in pipe.procs.items() if p.starts and not p.retired},
    )
