"""MLLP in → normalize worker (a real `affluent normalize` process) → canonical topics, decoded through the registry.

Replaying the raw topic (a second worker in a new consumer group reads it from the start) yields the
same event ids: downstream deduplication works.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings, MllpSettings
from connectors.mllp.intake import Accepted, IntakePolicy, assess
from connectors.mllp.service import MllpService
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE
from schemas.registry import Registry, decode
from streams.normalize.worker import RAW_TOPICS
from tests.support.mllp_client import CORPUS, MllpClient, control_id_of_ack, with_control_id
from tests.support.pipeline import ends, start_group_at, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def normalize_worker(group: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": group,
        "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "affluent.cli", "normalize"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        stop(proc)


def collect(
    kafka: KafkaSettings,
    registry: Registry,
    raw_ids: set[str],
    expected: int | None,
    timeout_s: float,
    start: list[TopicPartition],
    quiet_s: float = 3.0,
) -> dict[str, list[dict]]:
    """Canonical records (and dead letters) whose lineage points to our raw records, per topic.

    Stops at `expected` records, or (expected None) once every raw record is accounted for and nothing
    new came for `quiet_s` seconds.
    """
    consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    consumer.assign(start)  # where the outputs ended before this test's workers started
    found: dict[str, list[dict]] = defaultdict(list)
    count = 0
    accounted: set[str] = set()
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expected is not None and count >= expected:
                break
            if expected is None and accounted == raw_ids and time.monotonic() - last_new > quiet_s:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            record = decode(registry, msg.value())
            raw_id = record["envelope"]["lineage"]["raw_id"] if "envelope" in record else record.get("raw_id")
            if raw_id in raw_ids:
                found[msg.topic()].append(record)
                accounted.add(raw_id)
                count += 1
                last_new = time.monotonic()
    finally:
        consumer.close()
    return found


async def send_corpus(settings) -> set[str]:
    door = MllpService(
        settings.model_copy(update={"mllp": MllpSettings(port=0, metrics_port=None)}), CollectorRegistry()
    )
    port = await door.start(with_telemetry=False)
    raw_ids: set[str] = set()
    try:
        client = await MllpClient.connect("127.0.0.1", port)
        for path in sorted(CORPUS.glob("*.hl7")):
            payload, cid = with_control_id(path.read_bytes())
            code, echoed = control_id_of_ack((await client.request(payload))[0])
            assert echoed == cid and code in ("AA", "CA")
            accepted = assess(payload, IntakePolicy())
            assert isinstance(accepted, Accepted)
            raw_ids.add(accepted.raw_id)
        await client.close()
    finally:
        await door.stop()
    return raw_ids


async def test_mllp_to_canonical_and_replay_gives_same_event_ids(settings, live_kafka, registry):
    # Both workers start where the raw topics end now: they read this test's records (the broker is
    # shared, and its history can be long), and the second one replays exactly those.
    start = ends(live_kafka, list(RAW_TOPICS))
    raw_ids = await send_corpus(settings)
    assert len(raw_ids) >= 12

    first_group, replay_group = (
        f"test-normalize-{uuid.uuid4().hex[:8]}",
        f"test-replay-{uuid.uuid4().hex[:8]}",
    )
    start_group_at(live_kafka, first_group, start)
    start_group_at(live_kafka, replay_group, start)
    outputs = ends(live_kafka, [*CANONICAL_TOPICS, DLQ_NORMALIZE])
    with normalize_worker(first_group):
        first = collect(live_kafka, registry, raw_ids, expected=None, timeout_s=90, start=outputs)
    canonical = {t: recs for t, recs in first.items() if t.startswith("canonical.")}
    assert canonical.get("canonical.patient"), "ADT messages yield Patient events"
    assert canonical.get("canonical.observation"), "ORU messages yield Observation events"
    seen_raw = {r["envelope"]["lineage"]["raw_id"] for recs in canonical.values() for r in recs}
    dead_raw = {r["raw_id"] for r in first.get(DLQ_NORMALIZE, [])}
    assert seen_raw | dead_raw == raw_ids, "every raw record became canonical events or a dead letter"
    for record in first.get(DLQ_NORMALIZE, []):
        assert record["reason_code"] and record["stage"] == "normalize"
    ids_first = sorted(r["envelope"]["event_id"] for recs in canonical.values() for r in recs)
    assert len(ids_first) == len(set(ids_first))

    with normalize_worker(replay_group):
        both = collect(
            live_kafka,
            registry,
            raw_ids,
            expected=2 * sum(len(v) for v in first.values()),
            timeout_s=60,
            start=outputs,
        )
    ids_both = sorted(
        r["envelope"]["event_id"] for t, recs in both.items() if t.startswith("canonical.") for r in recs
    )
    assert ids_both == sorted(ids_first * 2), "a replay reproduces exactly the same event ids"
    by_id: dict[str, list[dict]] = defaultdict(list)
    for t, recs in both.items():
        for r in recs:
            if t.startswith("canonical."):
                by_id[r["envelope"]["event_id"]].append(r)
    assert all(a == b for a, b in by_id.values()), "and the same content"
