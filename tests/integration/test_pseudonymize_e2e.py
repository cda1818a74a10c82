"""MLLP in → normalize worker → pseudonymize worker (real subprocesses) → national topics.

Synthetic patients with identifiers unique to the run; one of them objects before any of their
messages arrives. Expected national records are computed in the test from the canonical events of our
raw ids with the same policies and test keys, so every national record is checked byte for byte; then
nothing identifying may be found in what leaves the hub (values, keys) nor in the worker's output.

Both workers start in fresh consumer groups whose offsets are first committed at the current end of
their input topics: they process this run's records only, however much history the topics hold.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer
from affluent.core.settings import KafkaSettings, MllpSettings
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
from affluent.sim import synthetic
from affluent.sim.accounting import collect
from connectors.mllp.client import send_all
from connectors.mllp.intake import Accepted, IntakePolicy, assess
from connectors.mllp.service import MllpService
from schemas.catalog import CANONICAL_TOPICS, NATIONAL_TOPICS, cohort_topics_of
from schemas.registry import decode, parse_schema
from streams.cohort.definition import load_cohorts
from streams.cohort.expect import CohortTracker
from streams.normalize.worker import RAW_TOPICS
from streams.pseudonymize.cli import opposition_add, opposition_remove
from streams.pseudonymize.worker import KEY_FILE_ENV, build_feeds, load_keys
from tests.support.pipeline import KEY_FILE, ends, fetch, free_port, start_group_at, worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENCODINGS = ("utf-8", "latin-1", "iso8859-15")


def run_messages(patients: list[synthetic.SyntheticPatient], run: str) -> list[bytes]:
    rng = random.Random(run)
    when = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    out: list[bytes] = []
    for i, p in enumerate(patients):
        visit = f"V{p.ipp}"
        out.append(synthetic.adt_a01(p, f"T{run}{i}A", when, visit))
        out.append(synthetic.oru_r01(rng, p, f"T{run}{i}B", when, visit))
        out.append(synthetic.oru_r01(rng, p, f"T{run}{i}C", when, visit))
    for i, p in enumerate(patients[:2]):  # two of them are diagnosed with a cancer: INCa's cohort members
        out.append(synthetic.adt(p, "A08", f"T{run}{i}D", when, f"V{p.ipp}", diagnosis="C34.1"))
    return out


async def send(settings: Any, payloads: list[bytes]) -> set[str]:
    door = MllpService(
        settings.model_copy(update={"mllp": MllpSettings(port=0, metrics_port=None)}), CollectorRegistry()
    )
    port = await door.start(with_telemetry=False)
    try:
        codes = await send_all("127.0.0.1", port, payloads, senders=2)
    finally:
        await door.stop()
    assert set(codes) <= {"AA", "CA"}, codes
    raw_ids = set()
    for payload in payloads:
        accepted = assess(payload, IntakePolicy())
        assert isinstance(accepted, Accepted)
        raw_ids.add(accepted.raw_id)
    return raw_ids


def canaries(patients: list[synthetic.SyntheticPatient]) -> list[str]:
    out = ["0472000000", "rue de l"]
    for p in patients:
        birth = p.birth
        out += [p.family, p.family.title(), p.given, p.given.upper(), p.nir, p.nir[:13], p.ipp, f"V{p.ipp}"]
        out += [birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    return out


def leaks(data: bytes, texts: list[str]) -> list[str]:
    found = []
    for text in texts:
        for encoding in ENCODINGS:
            try:
                needle = text.encode(encoding)
            except UnicodeEncodeError:
                continue
            if needle in data:
                found.append(f"{text!r} ({encoding})")
                break
    return found


def read_national(
    kafka: KafkaSettings, start: list[TopicPartition], want: set[str], timeout_s: float, quiet_s: float = 3.0
) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of national records written after `start`, until every id of `want` was seen
    (national event ids are found in the value's bytes) and nothing new came for `quiet_s`."""
    consumer = make_consumer(kafka, group_id=f"test-national-{uuid.uuid4().hex[:8]}")
    consumer.assign(start)
    out: list[tuple[str, bytes, bytes]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if seen >= want and time.monotonic() - last_new > quiet_s:
                break
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            key, value = msg.key() or b"", msg.value() or b""
            out.append((msg.topic() or "", key, value))
            seen |= {w for w in want if w.encode() in value}
            last_new = time.monotonic()
    finally:
        consumer.close()
    return out


async def test_canonical_to_national_pseudonymized_without_leaks_and_with_opposition(
    settings, live_kafka, registry, tmp_path, monkeypatch, request
):
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    keys = load_keys()
    feeds = build_feeds(keys)
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    patients = [
        replace(synthetic.patient(rng, i), ipp=f"{rng.randrange(10**7, 10**8)}", qualified=i % 2 == 0)
        for i in range(4)
    ]
    objecting = patients[1]  # IPP identity (not qualified)
    assert len({p.ipp for p in patients}) == len(patients)

    ensure_topics(live_kafka, [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG)])
    objection = dict(ins=objecting.nir, ipp=objecting.ipp, authority=synthetic.HOSPITAL_OID)
    # Withdrawn at the end (tombstones), pass or fail, so the shared registry does not keep it.
    request.addfinalizer(lambda: opposition_remove(settings, keys=keys, **objection))
    assert opposition_add(settings, keys=keys, **objection) == 2  # before the patient's first event

    norm_group, pseudo_group = f"test-normalize-{run}", f"test-pseudonymize-{run}"
    cohort_group = f"test-cohort-{run}"
    inca_topics = cohort_topics_of(["inca"])
    ensure_topics(
        live_kafka, [TopicSpec(t) for t in (*RAW_TOPICS, *CANONICAL_TOPICS, *inca_topics, *NATIONAL_TOPICS)]
    )
    # From the end of every raw topic the worker reads: their history on a shared broker is not ours.
    start_group_at(live_kafka, norm_group, ends(live_kafka, list(RAW_TOPICS)))
    start_group_at(live_kafka, pseudo_group, ends(live_kafka, [*CANONICAL_TOPICS, *inca_topics]))
    start_group_at(live_kafka, cohort_group, ends(live_kafka, list(CANONICAL_TOPICS)))
    national_start = ends(live_kafka, list(NATIONAL_TOPICS))
    canonical_start = ends(live_kafka, list(CANONICAL_TOPICS))  # their history is not ours either

    metrics_port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY__")}
    norm_env = {
        **base_env,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": norm_group,
        "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
    }
    pseudo_env = {
        **base_env,
        KEY_FILE_ENV: str(KEY_FILE),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": pseudo_group,
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(metrics_port),
    }
    cohort_env = {
        **base_env,
        "AFFLUENT_STREAMS__COHORT_GROUP": cohort_group,
        "AFFLUENT_STREAMS__COHORT_STATE_DIR": str(tmp_path / "cohort-state"),
        "AFFLUENT_STREAMS__COHORT_METRICS_PORT": str(free_port()),
    }
    pseudo_log = tmp_path / "pseudonymize.log"
    pseudo_cmd = [sys.executable, "-c", "from streams.pseudonymize.cli import main; main()"]
    metrics_text = ""
    try:
        with (
            worker([sys.executable, "-m", "affluent.cli", "normalize"], norm_env, tmp_path / "normalize.log"),
            worker(pseudo_cmd, pseudo_env, pseudo_log) as pseudo,
            worker([sys.executable, "-m", "affluent.cli", "cohort"], cohort_env, tmp_path / "cohort.log"),
        ):
            raw_ids = await send(settings, run_messages(patients, run))
            canonical = collect(
                live_kafka, registry, CANONICAL_TOPICS, raw_ids, timeout_s=45, start=canonical_start
            )
            assert {r["envelope"]["lineage"]["raw_id"] for rs in canonical.values() for r in rs} == raw_ids

            # What the national topics must hold: the policies applied to our canonical events; INCa
            # (cohort-scoped) gets the records the cohort stage's own decision forwards or releases.
            expected: dict[str, tuple[str, str, bytes]] = {}  # national event id → topic, key, body
            opposed_keys: set[str] = set()
            tracker = CohortTracker(load_cohorts(("hdh", "inca")))
            by_destination = {f.destination: f for f in feeds}
            due: list[tuple[Any, str, dict[str, Any]]] = []
            for topic, records in canonical.items():
                kind = topic.removeprefix("canonical.")
                for record in records:
                    due += [(f, kind, record) for f in feeds if f.destination not in tracker.scoped]
                    due += [(by_destination[d], k, r) for d, k, r in tracker.see(kind, record)]
            for feed, kind, record in due:
                national = feed.apply(kind, record)
                if national is None:
                    continue
                if (record["patient"].get("ipp") or {}).get("id") == objecting.ipp:
                    opposed_keys.add(national.key)
                else:
                    event_id = national.record["envelope"]["event_id"]
                    expected[event_id] = (national.topic, national.key, feed.encode(national))
            # INCa: the cancer patients' records only (patients 0 and 1; 1 objects)
            inca_keys = {k for t, k, _ in expected.values() if t.startswith("national.inca.")}
            assert len(inca_keys) == 1 and inca_keys < {k for t, k, _ in expected.values()}
            assert opposed_keys and expected
            assert {t for t, _, _ in expected.values()} >= {
                "national.hdh.patient.v1",
                "national.inca.patient.v1",
            }

            national = read_national(live_kafka, national_start, set(expected), timeout_s=45)
            assert pseudo.poll() is None, "the pseudonymize worker is still running"
            metrics_text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        worker_output = pseudo_log.read_bytes() if pseudo_log.exists() else b""
    assert b"Traceback" not in worker_output, worker_output.decode(errors="replace")[-3000:]

    # Every expected national record arrived, keyed by the patient pseudonym, byte for byte.
    ours = [(t, k, v) for t, k, v in national if v[5:] in {body for _, _, body in expected.values()}]
    by_body = {body: (topic, key) for topic, key, body in expected.values()}
    assert {v[5:] for _, _, v in ours} == set(by_body), "one national record per expected event"
    for topic, key, value in ours:
        assert (topic, key.decode()) == by_body[value[5:]]
        record = decode(registry, value)  # through the registry (Confluent header → national schema)
        entry_schema = registry.writer_schema(int.from_bytes(value[1:5], "big"))
        assert entry_schema["name"].startswith(f"fr.affluent.national.{topic.split('.')[1]}.")
        assert record["envelope"]["event_id"] in expected
        key_id = keys.current(topic.split(".")[1]).key_id
        assert key.decode().startswith(f"{key_id}:") and len(key.decode()) == len(key_id) + 1 + 52

    # The objecting patient: nothing of theirs reached any national topic; the drops are counted.
    assert not [1 for _, k, _ in national if k.decode() in opposed_keys]
    drops = {
        s.labels["destination"]: s.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "affluent_opposition_drops"
        for s in family.samples
        if s.name == "affluent_opposition_drops_total"
    }
    assert drops.get("hdh", 0) > 0 and drops.get("inca", 0) > 0, drops
    assert "affluent_national_records_total" in metrics_text
    assert "affluent_end_to_end_latency_seconds_bucket" in metrics_text
    assert f'affluent_pseudonym_key_info{{destination="hdh",key_id="{keys.current("hdh").key_id}"}} 1.0' in (
        metrics_text
    )

    # Leak test: no identifier of our patients in what leaves the hub, nor in the worker's output.
    texts = canaries(patients)
    for topic, key, value in national:
        assert not leaks(value, texts), f"{topic}: identifying bytes in a national value"
        assert not leaks(key, texts), f"{topic}: identifying bytes in a national key"
        shown = str(decode(registry, value))
        assert not [t for t in texts if t in shown], f"{topic}: identifying text in a decoded national record"
    assert not leaks(worker_output, texts), "identifying text in the pseudonymize worker's output"
    assert not leaks(metrics_text.encode(), texts), "identifying text in /metrics"

    # Self-check of the leak detector: the canonical records do hold the canaries.
    buf = io.BytesIO()
    sample = canonical["canonical.patient"][0]
    fastavro.schemaless_writer(buf, parse_schema(_canonical_patient_schema()), sample)
    assert leaks(buf.getvalue(), texts)


def _canonical_patient_schema() -> str:
    from schemas.registry import load_schema

    return load_schema("canonical/patient")
