"""The cohort stage on Faust, on the real broker and registry: ``affluent cohort`` as a subprocess.

Two synthetic patients: A has lab results only, B has lab results and, months later in clinical time, a
lung cancer diagnosis (an ADT with a DG1). INCa's cohort topics must receive B's labs — released in
the order they arrived, with their original bytes — then the diagnosis, and nothing of A. Then the
worker is SIGKILLed and started again: its table comes back from the changelog, so B's next lab is
forwarded at once (B is still a member) and A's late diagnosis releases A's labs held before the kill.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer
from affluent.core.producer import DurableProducer
from affluent.core.topics import INGEST_HL7V2_RAW
from affluent.dlq import _normalizer
from affluent.sim import synthetic
from connectors.runtime import topic_codec
from schemas.catalog import CANONICAL_TOPICS, cohort_topic
from tests.support.pipeline import door_raw, ends, free_port, start_group_at

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

INCA_TOPICS = [cohort_topic("inca", t.removeprefix("canonical.")) for t in CANONICAL_TOPICS]


def with_diagnosis(adt: bytes, code: str, when: datetime) -> bytes:
    """An ADT^A08 of the patient with one DG1 (principal, final) appended."""
    text = adt.decode("latin-1").replace("ADT^A01", "ADT^A08").rstrip("\r")
    return f"{text}\rDG1|1||{code}^Tumeur maligne^CIM10||{when:%Y%m%d%H%M%S}|F|||||||||1\r".encode("latin-1")


async def canonical(settings, registry, messages: list[bytes]) -> list[tuple[str, bytes, bytes]]:
    """The canonical records the normalize stage makes of ``messages``, written to canonical.* in order;
    returns (event id, key, value) per record written."""
    normalizer = _normalizer(settings)
    producer = DurableProducer(settings.kafka)
    codec = await topic_codec(registry, INGEST_HL7V2_RAW, "raw_message")
    written = []
    try:
        for n, payload in enumerate(messages):
            raw = door_raw(payload)
            value = codec.encode(raw.record(datetime.now(UTC)))
            outputs = [
                o for o in normalizer.process(value, INGEST_HL7V2_RAW, 0, n) if o.topic in CANONICAL_TOPICS
            ]
            assert outputs, payload[:80]
            for out in outputs:
                await producer.send(out.topic, out.value, out.key)
                written.append((out.topic, out.key, out.value))
    finally:
        producer.flush()
    return written


def read_from(
    settings, start: list[TopicPartition], want: int, timeout_s: float
) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of what the cohort topics got after ``start``, until ``want`` or the timeout."""
    consumer = make_consumer(settings.kafka, group_id=f"it-cohort-read-{uuid.uuid4().hex[:6]}")
    consumer.assign(start)
    out: list[tuple[str, bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < want:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append((str(msg.topic()), msg.key() or b"", msg.value() or b""))
        while (msg := consumer.poll(1.0)) is not None:  # and anything more that is already there
            if not msg.error():
                out.append((str(msg.topic()), msg.key() or b"", msg.value() or b""))
    finally:
        consumer.close()
    return out


def by_kind(records: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """Per kind, the values in the order of their first arrival: at-least-once delivery may repeat a
    record (a worker killed before its commit processes its inputs again); repeats carry the same bytes
    and event id, and collapse downstream."""
    out: dict[str, list[bytes]] = {}
    for kind, value in records:
        if value not in out.setdefault(kind, []):
            out[kind].append(value)
    return out


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "affluent.cli", "cohort"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_cohort_members_get_their_history_others_nothing_and_a_killed_worker_recovers(
    settings, live_kafka, registry, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    base = rng.randrange(10**6, 9 * 10**6)
    a, b = synthetic.patient(rng, 0, ipp_base=base), synthetic.patient(rng, 1, ipp_base=base)
    t0 = datetime(2026, 3, 2, 9, 0)
    labs_a = [
        synthetic.oru_r01(rng, a, f"CA{run}{n}", t0 + timedelta(days=30 * n), f"VA{run}") for n in range(3)
    ]
    labs_b = [
        synthetic.oru_r01(rng, b, f"CB{run}{n}", t0 + timedelta(days=30 * n), f"VB{run}") for n in range(3)
    ]
    dx_b = with_diagnosis(
        synthetic.adt_a01(b, f"DB{run}", t0 + timedelta(days=90), f"VB{run}"),
        "C34.1",
        t0 + timedelta(days=90),
    )

    group = f"it-cohort-{run}"
    ensure_topics(live_kafka, [TopicSpec(t) for t in (*CANONICAL_TOPICS, *INCA_TOPICS)])
    start_group_at(live_kafka, group, ends(live_kafka, list(CANONICAL_TOPICS)))  # this run's records only
    out_start = ends(live_kafka, INCA_TOPICS)
    env = {
        **os.environ,
        "AFFLUENT_STREAMS__COHORT_GROUP": group,
        "AFFLUENT_STREAMS__COHORT_STATE_DIR": str(tmp_path / "state"),
        "AFFLUENT_STREAMS__COHORT_METRICS_PORT": str(free_port()),
    }
    log = tmp_path / "cohort.log"
    worker = start_worker(env, log)
    try:
        first = asyncio.run(canonical(settings, registry, [*labs_a, *labs_b, dx_b]))
        key_a = {k for t, k, _ in first[: len(first)]}  # keys of both patients
        b_key = first[-1][1]
        a_keys = key_a - {b_key}
        b_records = [(t, k, v) for t, k, v in first if k == b_key]
        got = read_from(settings, out_start, len(b_records), timeout_s=120)
        assert got, log.read_text(errors="replace")[-3000:]
        assert {k for _, k, _ in got} == {b_key}, "nothing of patient A may reach INCa"
        assert not a_keys & {k for _, k, _ in got}
        # B's records, unchanged, each to its kind's cohort topic in the order they arrived there (one
        # topic per kind, as canonical.*: order holds per topic and patient)
        assert by_kind([(t.removeprefix("cohort.inca."), v) for t, _, v in got]) == by_kind(
            [(t.removeprefix("canonical."), v) for t, _, v in b_records]
        )

        # SIGKILL, restart: the table comes back from its changelog
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        (tmp_path / "state").rename(tmp_path / "state-lost")  # and the local RocksDB is gone too
        worker = start_worker(env, log)
        later_b = synthetic.oru_r01(rng, b, f"CB{run}9", t0 + timedelta(days=120), f"VB{run}")
        dx_a = with_diagnosis(
            synthetic.adt_a01(a, f"DA{run}", t0 + timedelta(days=95), f"VA{run}"),
            "C25.0",
            t0 + timedelta(days=95),
        )
        mid = ends(live_kafka, INCA_TOPICS)
        second = asyncio.run(canonical(settings, registry, [later_b, dx_a]))
        a_before = [(t, v) for t, k, v in first if k in a_keys]
        want = len(second) + len(a_before)
        got2 = read_from(settings, mid, want, timeout_s=180)
        values = [(t.removeprefix("cohort.inca."), v) for t, _, v in got2]
        b_now = [(t.removeprefix("canonical."), v) for t, k, v in second if k == b_key]
        a_all = [(t.removeprefix("canonical."), v) for t, v in a_before] + [
            (t.removeprefix("canonical."), v) for t, k, v in second if k in a_keys
        ]
        assert by_kind([x for x in values if x in b_now]) == by_kind(b_now), (
            "B is still a member after the kill"
        )
        seen_a, want_a = by_kind([x for x in values if x in a_all]), by_kind(a_all)
        assert {k: len(v) for k, v in seen_a.items()} == {k: len(v) for k, v in want_a.items()}, [
            (t, len(v)) for t, v in values
        ]
        assert seen_a == want_a, "A's held labs came back, in order"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
