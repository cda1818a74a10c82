"""The fault suite, reduced for CI: three KRaft brokers (RF 3, min ISR 2), the real door and workers as
processes, a hospital that resends what was not acknowledged, and crashes while it sends.

Faults, in one run: SIGKILL the broker leading the raw topic's partition (restarted later); SIGKILL
the normalize worker mid-stream and the pseudonymize worker (both restarted); SIGKILL the MLLP door
between messages (restarted on the same port; the senders reconnect and resend).

Pass (DESIGN §7): every message the senders saw acknowledged reaches its canonical events (or
``dlq.normalize``) and every national record those events imply is on its national topic; after
deduplication by ``event_id`` no record appears twice with different content; each patient's national
records keep the order in which the hospital sent them; nothing needed a manual action. The suite prints
its accounting table (``make chaos`` shows it).
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
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from affluent import synthetic
from affluent.accounting import collect
from affluent.errors import KafkaUnavailable
from affluent.kafka import TopicSpec, ensure_topics, make_admin, make_consumer
from affluent.settings import KafkaSettings, StackSettings
from affluent.stack import LocalStack
from affluent.topics import (
    ACK_CACHE_CONFIG,
    COMPACTED_CONFIG,
    CONTROL_ACK,
    CONTROL_OPPOSITION,
    DLQ_INGEST,
    INGEST_HL7V2_RAW,
)
from connectors.mllp.intake import Accepted, IntakePolicy, assess
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS
from streams.pseudonymize.worker import KEY_FILE_ENV, build_feeds, load_keys
from tests.support.pipeline import KEY_FILE, free_port, stop
from tests.support.resilient import SenderLog, send_lane

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

LANES = 4
PATIENTS = 40
MESSAGES = 480


@pytest.fixture
def cluster(tmp_path):
    stack = LocalStack(StackSettings(state_dir=tmp_path / "chaos", kafka_port=29192), brokers=3)
    stack.up(registry=False)
    yield stack
    stack.down(wipe=True)


def pipeline_topics(groups: list[str]) -> list[TopicSpec]:
    return [
        *(TopicSpec(t) for t in (INGEST_HL7V2_RAW, DLQ_INGEST, *CANONICAL_TOPICS, DLQ_NORMALIZE)),
        *(TopicSpec(t) for t in (*NATIONAL_TOPICS, DLQ_PSEUDONYMIZE)),
        TopicSpec(CONTROL_ACK, config=ACK_CACHE_CONFIG),
        TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG),
        *(TopicSpec(f"{g}-__assignor-__leader", partitions=1) for g in groups),
    ]


def create_topics(kafka: KafkaSettings, specs: list[TopicSpec]) -> None:
    for attempt in range(15):  # a just-formed 3-node quorum may drop the first admin requests
        try:
            ensure_topics(kafka, specs)
            return
        except KafkaUnavailable:
            assert attempt < 14, "the cluster never accepted the topics"
            time.sleep(2)


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

    def start(self) -> None:
        self.starts += 1
        log = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} was not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
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


def read_topics(kafka: KafkaSettings, topics: list[str], until_quiet_s: float = 3.0) -> list[Any]:
    """Every record of ``topics`` in partition order: (topic, partition, key, value)."""
    consumer = make_consumer(kafka, group_id=f"chaos-read-{uuid.uuid4().hex[:8]}")
    assignment = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        assignment += [TopicPartition(topic, p, 0) for p in md.partitions]
    consumer.assign(assignment)
    out = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < until_quiet_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.topic(), msg.partition(), msg.key(), msg.value()))
            last = time.monotonic()
    finally:
        consumer.close()
    return out


async def test_nothing_acknowledged_is_lost_through_broker_worker_and_door_crashes(
    cluster, registry, settings, tmp_path, capsys
):
    phases: dict[str, float] = {}
    clock = time.monotonic()
    kafka = cluster.kafka_settings()
    run = uuid.uuid4().hex[:6]
    groups = [f"chaos-normalize-{run}", f"chaos-pseudonymize-{run}"]
    create_topics(kafka, pipeline_topics(groups))

    door_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_")},
        "AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "AFFLUENT_KAFKA__REPLICATION_FACTOR": "3",
        "AFFLUENT_KAFKA__MIN_INSYNC_REPLICAS": "2",
        "AFFLUENT_REGISTRY__URL": settings.registry.url,
        "AFFLUENT_MLLP__PORT": str(door_port),
        "AFFLUENT_MLLP__METRICS_PORT": str(free_port()),
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": groups[0],
        "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
        "AFFLUENT_PSEUDONYMIZE_GROUP": groups[1],
        "AFFLUENT_PSEUDONYMIZE_METRICS_PORT": str(free_port()),
        KEY_FILE_ENV: str(KEY_FILE),
    }
    cli = [sys.executable, "-m", "affluent.cli"]
    procs = {
        name: Process(name, [*cli, name], env, tmp_path) for name in ("mllp", "normalize", "pseudonymize")
    }
    for p in procs.values():
        p.start()

    seed = random.Random(run).randrange(10**6)
    batch = synthetic.messages(MESSAGES, seed=seed, patients=PATIENTS)
    lanes: list[list[bytes]] = [[] for _ in range(LANES)]
    for n, payload in enumerate(batch):
        lanes[(n % PATIENTS) % LANES].append(payload)  # a patient always goes through the same lane
    order = {payload: n for n, payload in enumerate(batch)}
    log = SenderLog()
    faults: list[str] = []

    async def schedule() -> None:
        await asyncio.sleep(1.5)
        leader = await asyncio.to_thread(leader_of, kafka, INGEST_HL7V2_RAW, 0)
        cluster.kill_node(leader)
        faults.append(f"SIGKILL broker {leader} (leader of {INGEST_HL7V2_RAW}[0])")
        await asyncio.sleep(1.5)
        procs["normalize"].kill()
        faults.append("SIGKILL normalize worker")
        await asyncio.sleep(1.5)
        procs["normalize"].start()
        procs["mllp"].kill()
        faults.append("SIGKILL MLLP door")
        await asyncio.sleep(1.0)
        procs["mllp"].start()
        await asyncio.sleep(2.0)
        procs["pseudonymize"].kill()
        faults.append("SIGKILL pseudonymize worker")
        await asyncio.sleep(1.0)
        procs["pseudonymize"].start()
        await asyncio.to_thread(cluster.start_node, leader)
        faults.append(f"restart broker {leader}")

    try:
        await wait_port(door_port)
        phases["start"] = time.monotonic() - clock
        await asyncio.gather(
            schedule(),
            *(send_lane("127.0.0.1", lambda: door_port, lane, log, pause_s=0.04) for lane in lanes),
        )
        phases["send"] = time.monotonic() - clock - sum(phases.values())
        acked = log.acked
        assert len(acked) == len(batch), "every message is eventually acknowledged (the senders resend)"

        raw_ids = {}
        for payload in acked:
            outcome = assess(payload, IntakePolicy())
            assert isinstance(outcome, Accepted)
            raw_ids[outcome.raw_id] = order[payload]
        found = await asyncio.to_thread(
            collect, kafka, registry, [*CANONICAL_TOPICS, DLQ_NORMALIZE], set(raw_ids), 90.0
        )
        accounted = {
            str(r["envelope"]["lineage"]["raw_id"] if "envelope" in r else r["raw_id"])
            for records in found.values()
            for r in records
        }
        missing_canonical = set(raw_ids) - accounted
        in_raw = (
            await asyncio.to_thread(collect, kafka, registry, [INGEST_HL7V2_RAW], missing_canonical, 20.0)
            if missing_canonical
            else {}
        )
        missing_raw = missing_canonical - {str(r["raw_id"]) for rs in in_raw.values() for r in rs}
        phases["canonical"] = time.monotonic() - clock - sum(phases.values())

        keys = load_keys_from(env)
        feeds = build_feeds(keys)
        expected: dict[str, tuple[str, int, bytes]] = {}  # national event id → topic, message no., body
        for topic, records in found.items():
            if not topic.startswith("canonical."):
                continue
            for record in records:
                for feed in feeds:
                    national = feed.apply(topic.removeprefix("canonical."), record)
                    if national is not None:
                        event_id = str(national.record["envelope"]["event_id"])
                        raw_id = str(record["envelope"]["lineage"]["raw_id"])
                        expected[event_id] = (national.topic, raw_ids[raw_id], feed.encode(national))
        national = await asyncio.to_thread(
            collect,
            kafka,
            registry,
            sorted(NATIONAL_TOPICS),
            set(expected),
            180.0,
            None,
            3.0,
            None,
            lambda record: str(record["envelope"]["event_id"]),
        )
        seen = {str(r["envelope"]["event_id"]) for rs in national.values() for r in rs}
        phases["national"] = time.monotonic() - clock - sum(phases.values())
        records = await asyncio.to_thread(read_topics, kafka, sorted(NATIONAL_TOPICS))
        alive = {name: p.proc is not None and p.proc.poll() is None for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.stop()

    # Duplicates may exist (at-least-once); with different content, never. Per patient, in order.
    by_body = {body: event_id for event_id, (_, _, body) in expected.items()}
    bodies: dict[str, set[bytes]] = defaultdict(set)
    sequence: dict[tuple[str, bytes], list[int]] = defaultdict(list)
    first_seen: set[str] = set()
    copies = 0
    for topic, _partition, key, value in records:
        body = value[5:]
        event_id = by_body.get(body)
        if event_id is None:
            continue
        bodies[event_id].add(body)
        if event_id in first_seen:
            copies += 1
            continue
        first_seen.add(event_id)
        sequence[(topic, key)].append(expected[event_id][1])
    conflicting = [e for e, b in bodies.items() if len(b) > 1]
    out_of_order = [k for k, seq in sequence.items() if seq != sorted(seq)]

    table = [
        ("faults injected", "; ".join(faults)),
        ("messages sent / acknowledged", f"{len(batch)} / {len(acked)}"),
        ("sender outcomes", ", ".join(f"{k} {v}" for k, v in sorted(log.outcomes.items()))),
        ("acknowledged but not in the raw topic", str(len(missing_raw))),
        ("acknowledged but no canonical event or dead letter", str(len(missing_canonical))),
        ("canonical events", str(sum(len(v) for k, v in found.items() if k.startswith("canonical.")))),
        ("dead letters (dlq.normalize)", str(len(found.get(DLQ_NORMALIZE, [])))),
        ("national records expected / found", f"{len(expected)} / {len(set(expected) & seen)}"),
        ("national duplicate copies (same content)", str(copies)),
        ("event ids with different content", str(len(conflicting))),
        ("patients' streams out of order", str(len(out_of_order))),
        ("seconds: start, send, canonical, national", ", ".join(f"{v:.0f}" for v in phases.values())),
        ("processes restarted (SIGKILL)", ", ".join(f"{n} x{p.starts - 1}" for n, p in procs.items())),
    ]
    with capsys.disabled():
        print("\n\nFault suite accounting")
        for label, value in table:
            print(f"  {label:<52} {value}")

    assert not missing_canonical
    assert set(expected) <= seen, f"{len(set(expected) - seen)} national records missing"
    assert not conflicting and not out_of_order
    assert all(alive.values()), alive
    assert Counter(log.outcomes)["AA"] >= len(batch)


def load_keys_from(env: dict[str, str]) -> Any:
    return load_keys({k: v for k, v in env.items() if k.startswith("AFFLUENT_PSEUDO_KEY")})
