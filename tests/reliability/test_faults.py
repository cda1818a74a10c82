"""The fault suite: three KRaft brokers (RF 3, min ISR 2) with their own schema registry, the real door
and workers as processes, a hospital that resends what was not acknowledged, and crashes while it sends.

Scenarios (each prints its accounting table; the pass criteria are in :mod:`tests.reliability.harness`):

- broker, worker and door crashes: SIGKILL the broker leading the raw topic's partition (restarted
  later), the normalize worker mid-stream and the pseudonymize worker (both restarted), the MLLP door
  between messages (restarted on the same port; the senders reconnect and resend) — the door's kill
  also lands, some runs, between the Kafka delivery report and the ACK;
- registry outage: the registry stopped while traffic flows (30 s in ``make chaos``, 10 s in CI), both
  workers SIGKILLed and restarted while it is away (so they start, and decode schema ids, with a cold
  cache): the door keeps acknowledging, the workers wait, nothing is dead-lettered for it;
- rebalance: a second normalize worker joins the group and the first is SIGKILLed while the group is
  rebalancing; the survivor takes every partition;
- cut before the ACK: senders write a message, close the socket without reading the ACK, and resend it
  on a new connection; the resend is answered AA from the door's duplicate detection;
- reused control ids: every other message of a lane carries the MSH-10 of the message before it (an
  interface engine whose counter was reset) while the door is killed and restarted: both messages of
  each pair are stored and reach the national topics (before, the second was answered from the ACK
  cache and never stored).

``make chaos`` sets ``AFFLUENT_CHAOS_FULL=1`` (full durations and volumes) and ``AFFLUENT_CHAOS_REPORT``
(the scenarios' tables become the fault-suite section of BENCHMARKS.md); CI runs the reduced form.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState

from affluent.core.kafka import make_admin
from affluent.core.settings import RegistrySettings, StackSettings
from affluent.core.topics import INGEST_HL7V2_RAW
from affluent.local.stack import LocalStack
from bench.sections import write_section
from formats.hl7 import er7
from schemas.registry import Registry
from streams.normalize.worker import RAW_TOPICS
from tests.reliability.harness import (
    FULL,
    REPORTED,
    Cluster,
    Pipeline,
    Traffic,
    account,
    chaos_report,
    leader_of,
    wait_port,
)
from tests.support.mllp_client import with_control_id
from tests.support.resilient import SenderLog, cut_before_ack, send_lane

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(900)]

REGISTRY_OUTAGE_S = 30.0 if FULL else 10.0
REBALANCING = (ConsumerGroupState.PREPARING_REBALANCING, ConsumerGroupState.COMPLETING_REBALANCING)


@pytest.fixture(scope="module", autouse=True)
def chaos_section():
    """``make chaos`` sets AFFLUENT_CHAOS_REPORT: the scenarios' tables become BENCHMARKS.md's section."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    REPORTED.clear()
    yield
    target = os.environ.get("AFFLUENT_CHAOS_REPORT")
    if target and REPORTED:
        write_section("chaos", chaos_report(started, REPORTED), Path(target))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Fixed ports above the ephemeral range: brokers 29192-29197, registry 29198, its management 29199.
    settings = StackSettings(
        state_dir=tmp_path_factory.mktemp("chaos"),
        kafka_port=29192,
        registry_port=29198,
        registry_management_port=29199,
    )
    stack = LocalStack(settings, brokers=3)
    try:
        stack.up(registry=True)
        yield Cluster(stack, stack.kafka_settings(), Registry(RegistrySettings(url=stack.registry_url)))
    finally:
        stack.down(wipe=False)  # logs stay in pytest's tmp dir (it keeps the last three runs)


def lanes_of(pipe: Pipeline, log: SenderLog, pause_s: float):
    def lane(payloads: list[bytes]):
        return send_lane("127.0.0.1", lambda: pipe.door_port, payloads, log, pause_s=pause_s)

    return lane


async def test_broker_worker_and_door_crashes(cluster, tmp_path, capsys):
    pipe = Pipeline(cluster, tmp_path)
    traffic = Traffic.make(pipe.run, 480)
    log = SenderLog()
    faults: list[str] = []
    procs = pipe.procs

    async def schedule() -> None:
        await asyncio.sleep(1.5)
        leader = await asyncio.to_thread(leader_of, pipe.kafka, INGEST_HL7V2_RAW, 0)
        cluster.stack.kill_node(leader)
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
        procs["pseudonymize"].restart()
        faults.append("SIGKILL pseudonymize worker")
        await asyncio.to_thread(cluster.stack.start_node, leader)
        faults.append(f"restart broker {leader}")

    try:
        await pipe.start()
        await pipe.send(traffic, lanes_of(pipe, log, 0.04), schedule())
        result = await account(pipe, traffic, log)
    finally:
        pipe.stop()
    result.print("broker, worker and door crashes", faults, pipe, capsys)
    result.check()


async def test_registry_outage(cluster, tmp_path, capsys):
    pipe = Pipeline(cluster, tmp_path)
    messages = 480 if FULL else 240
    traffic = Traffic.make(pipe.run, messages)
    log = SenderLog()
    faults: list[str] = []
    acked_while_away: list[int] = []
    away: list[float] = []
    workers = [pipe.procs["normalize"], pipe.procs["pseudonymize"]]

    async def schedule() -> None:
        await asyncio.sleep(2.0)
        # A rolling restart just before the outage: the new workers have registered their schemas but
        # have decoded nothing yet, so the first records they meet need the registry (cold cache).
        for worker in workers:
            worker.stop()
            worker.start()
        for worker in workers:
            await pipe.wait_serving(worker.name)
        faults.append("rolling restart of both workers")
        await asyncio.to_thread(cluster.stack.stop_registry, 0)  # at once, before caches warm up
        stopped = time.monotonic()
        before = len(log.acked)
        faults.append(f"registry SIGKILLed, away {REGISTRY_OUTAGE_S:.0f} s")
        await asyncio.sleep(REGISTRY_OUTAGE_S / 2)
        pipe.procs["pseudonymize"].restart()  # this start must wait for the registry, not crash-loop
        faults.append("SIGKILL + restart of pseudonymize while it is away")
        await asyncio.sleep(REGISTRY_OUTAGE_S - (time.monotonic() - stopped))
        acked_while_away.append(len(log.acked) - before)
        await asyncio.to_thread(cluster.stack.start_registry)
        away.append(time.monotonic() - stopped)
        faults.append("registry started again")

    # Sending lasts past the outage, so messages keep arriving while the registry is away.
    pause_s = (REGISTRY_OUTAGE_S + 20) / (messages / len(traffic.lanes))
    try:
        await pipe.start()
        await pipe.send(traffic, lanes_of(pipe, log, pause_s), schedule())
        result = await account(pipe, traffic, log)
    finally:
        pipe.stop()
    held = {w.name: w.log_lines("holding the batch") for w in workers}
    waited = {w.name: w.log_lines("unreachable; waiting") for w in workers}
    result.extra += [
        ("acknowledged while the registry was stopped", str(acked_while_away[0])),
        ("seconds the registry did not answer (stop to ready)", f"{away[0]:.0f}"),
        ("retries of a held batch (log lines)", ", ".join(f"{k} {v}" for k, v in held.items())),
        ("start-up waits for the registry (log lines)", ", ".join(f"{k} {v}" for k, v in waited.items())),
    ]
    result.print("registry outage", faults, pipe, capsys)
    result.check()
    assert acked_while_away[0] > 0, "the door acknowledges without the registry (raw needs no lookup)"
    assert waited["pseudonymize"] > 0, "the worker started during the outage waited for the registry"


def group_state(pipe: Pipeline, group: str) -> ConsumerGroupState:
    admin = make_admin(pipe.kafka)
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    return future.result().state


def group_members(pipe: Pipeline, group: str) -> list[set[tuple[str, int]]]:
    admin = make_admin(pipe.kafka)
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    return [
        {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} for m in future.result().members
    ]


async def test_worker_killed_during_rebalance(cluster, tmp_path, capsys):
    pipe = Pipeline(cluster, tmp_path)
    messages = 480 if FULL else 240
    traffic = Traffic.make(pipe.run, messages)
    log = SenderLog()
    faults: list[str] = []
    group = pipe.groups[0]

    async def schedule() -> None:
        await asyncio.sleep(2.0)
        pipe.add_worker("normalize-2", "normalize").start()
        faults.append("second normalize worker joins the group")
        deadline = time.monotonic() + 120
        state = await asyncio.to_thread(group_state, pipe, group)
        while state not in REBALANCING and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            state = await asyncio.to_thread(group_state, pipe, group)
        pipe.procs["normalize"].kill()
        pipe.procs["normalize"].retired = True
        faults.append(f"SIGKILL the first while the group is {state.name}")

    try:
        await pipe.start()
        await pipe.send(traffic, lanes_of(pipe, log, 0.08), schedule())
        result = await account(pipe, traffic, log)
        members = await asyncio.to_thread(group_members, pipe, group)
        deadline = time.monotonic() + 60  # the dead member leaves once its session times out (15 s)
        while len(members) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(1)
            members = await asyncio.to_thread(group_members, pipe, group)
    finally:
        pipe.stop()
    raw_partitions = {(t, p) for t in RAW_TOPICS for p in range(3)}
    result.extra.append(
        ("group members at the end (partitions each)", ", ".join(str(len(m)) for m in members))
    )
    result.print("worker killed during a rebalance", faults, pipe, capsys)
    result.check()
    assert faults[-1].endswith(("PREPARING_REBALANCING", "COMPLETING_REBALANCING")), faults[-1]
    assert len(members) == 1 and raw_partitions <= members[0], "the survivor holds every raw partition"


async def test_socket_cut_before_ack_then_resent(cluster, tmp_path, capsys):
    pipe = Pipeline(cluster, tmp_path)
    traffic = Traffic.make(pipe.run, 480 if FULL else 160)
    log = SenderLog()
    cut: list[bytes] = []

    def lane(payloads: list[bytes]):
        async def run() -> None:
            for n, payload in enumerate(payloads):
                if n % 2 == 0:  # every other message: the first attempt's socket dies before the ACK
                    await cut_before_ack("127.0.0.1", pipe.door_port, payload, log)
                    cut.append(payload)
                await send_lane("127.0.0.1", lambda: pipe.door_port, [payload], log)

        return run()

    try:
        await pipe.start()
        await pipe.send(traffic, lane)
        door = pipe.door_outcomes()
        result = await account(pipe, traffic, log)
    finally:
        pipe.stop()
    result.extra.append(("door outcomes", ", ".join(f"{k} {v}" for k, v in sorted(door.items()))))
    result.print("socket cut before the ACK, then resent", ["sender closes before the ACK"], pipe, capsys)
    result.check()
    assert log.outcomes["AA"] == len(traffic.batch), "every resend answered AA"
    assert door["duplicate"] == len(cut), "each resend recognised as the message already stored"
    assert door["stored"] == len(traffic.batch), "each message stored once in the raw topic"


def reuse_control_ids(traffic: Traffic) -> int:
    """Give every other message of each lane the control id of the message before it; how many."""
    renamed: dict[bytes, bytes] = {}
    for lane in traffic.lanes:
        for i in range(1, len(lane), 2):
            previous = er7.parse(lane[i - 1].decode("iso8859-15")).segments[0].value(10) or ""
            renamed[lane[i]], _ = with_control_id(lane[i], previous)
            lane[i] = renamed[lane[i]]
    traffic.batch[:] = [renamed.get(p, p) for p in traffic.batch]
    traffic.order.clear()
    traffic.order.update({p: n for n, p in enumerate(traffic.batch)})
    return len(renamed)


async def test_messages_sharing_a_control_id_all_reach_the_national_topics(cluster, tmp_path, capsys):
    pipe = Pipeline(cluster, tmp_path)
    traffic = Traffic.make(pipe.run, 480 if FULL else 160)
    reused = reuse_control_ids(traffic)
    assert (
        len({er7.parse(p.decode("iso8859-15")).segments[0].value(10) for p in traffic.batch})
        == len(traffic.batch) - reused
    )
    log = SenderLog()
    faults: list[str] = []

    async def schedule() -> None:
        while len(log.acked) < len(traffic.batch) // 3:  # noqa: ASYNC110 - polls the senders' log
            await asyncio.sleep(0.05)
        pipe.procs["mllp"].restart()  # the reuse must also hold against a door restarted mid-stream
        faults.append("door SIGKILLed and restarted (its ACK cache re-read from control.ack)")

    try:
        await pipe.start()
        await pipe.send(traffic, lanes_of(pipe, log, pause_s=0.02), schedule())
        await wait_port(pipe.door_metrics_port)  # the restarted door serves its counters
        door = pipe.door_outcomes()
        result = await account(pipe, traffic, log)
    finally:
        pipe.stop()
    result.extra.append(("messages reusing a control id", str(reused)))
    result.extra.append(
        ("door outcomes since restart", ", ".join(f"{k} {v}" for k, v in sorted(door.items())))
    )
    result.print("reused control ids (reset counter at the sender)", faults, pipe, capsys)
    result.check()
    assert log.outcomes["AA"] == len(traffic.batch), "every message answered AA"
    assert door["stored"] > 0
