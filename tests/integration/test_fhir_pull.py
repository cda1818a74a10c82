"""The FHIR puller against the in-test FHIR server and the real broker and registry.

Paging over many pages with timestamps shared across page breaks, resume after a stop between pages
and after a SIGKILL, Bulk Data export, static and SMART auth with refresh, 429/500 recovery and the
retry bound, and a dead broker that must leave the checkpoint where it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import TopicPartition
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry

from affluent.core.compacted import CompactedView
from affluent.core.errors import FhirSourceError, KafkaUnavailable
from affluent.core.kafka import make_consumer
from affluent.core.producer import DurableProducer
from affluent.core.settings import FhirPollSettings, KafkaSettings, Settings
from affluent.core.topics import COMPACTED_CONFIG
from connectors.fhir_poll.checkpoint import Checkpoint, checkpoint_key
from connectors.fhir_poll.config import SourceConfig
from connectors.fhir_poll.puller import open_puller
from connectors.fhir_poll.search import TypeReport
from connectors.raw import RawWriter
from schemas.registry import Registry, decode
from streams.normalize.fhir import map_fhir
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from tests.support.fhir_server import FhirTestServer

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def server() -> AsyncIterator[FhirTestServer]:
    srv = FhirTestServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def pull_settings(settings: Settings, new_topic: Callable[..., str]) -> Settings:
    fp = FhirPollSettings(
        raw_topic=new_topic("test.fhirpull.raw"),
        dlq_topic=new_topic("test.fhirpull.dlq"),
        checkpoint_topic=new_topic("test.fhirpull.cp", **COMPACTED_CONFIG),
        max_attempts=4,
        backoff_base_s=0.05,
        backoff_max_s=2.0,
        bulk_poll_s=0.1,
        bulk_timeout_s=30,
        metrics_port=None,
    )
    return settings.model_copy(update={"fhir_poll": fp})


def source_of(base: str, **changes: Any) -> SourceConfig:
    fields: dict[str, Any] = {
        "name": f"eds-{uuid.uuid4().hex[:6]}",
        "base_url": base,
        "facility": "CHU-TEST",
        "resource_types": ["Patient", "Observation"],
        "page_size": 25,
    }
    fields.update(changes)
    return SourceConfig(**fields)


def raw_records(kafka: KafkaSettings, registry: Registry, topic: str, expected: int) -> list[dict[str, Any]]:
    from tests.conftest import read_all

    return [decode(registry, value) for _, value in read_all(kafka, topic, expected, timeout_s=20) if value]


def checkpoint_of(kafka: KafkaSettings, topic: str, source: str, rtype: str) -> Checkpoint:
    """Read back from Kafka by a fresh reader, as a restarted puller would."""
    view = CompactedView(kafka, topic, name="test-fhirpull")
    view.start(timeout_s=20)
    try:
        return Checkpoint.from_bytes(view.get(checkpoint_key(source, rtype)))
    finally:
        view.stop()


def message_ids(server: FhirTestServer, *types: str) -> set[str]:
    return {f"{t}/{r['id']}/_history/{r['meta']['versionId']}" for t in types for r in server.all(t)}


class Stop(Exception):
    """Raised by a page hook: the run ends between two pages, as a crash would end it."""


async def test_paging_over_many_pages_then_increments(server, pull_settings, live_kafka, registry):
    # Three resources per instant and 25 per page: equal timestamps straddle most page breaks.
    server.seed("Patient", 160, per_instant=3)
    server.seed("Observation", 140, per_instant=3)
    source = source_of(server.base_url + "/fhir")
    async with open_puller(pull_settings, source) as puller:
        reports = await puller.run_once()
        assert [(r.rtype, r.stored, r.pages) for r in reports] == [
            ("Patient", 160, 7),
            ("Observation", 140, 6),
        ]
        first_pages = [q for q in server.queries if "_getpages" not in q]
        assert len(first_pages) == 2
        assert all(q.get("_sort") == "_lastUpdated" and q.get("_count") == "25" for q in first_pages)
        # Nothing new: the boundary resources come back (ge) and are recognised, none stored again.
        again = await puller.run_once()
        assert [(r.stored, r.skipped) for r in again] == [(0, 1), (0, 2)]  # 160 % 3, 140 % 3
        # New resources and new versions of old ones are all that the next pass stores.
        server.seed("Patient", 4)
        updated = dict(server.all("Observation")[5])
        server.add(updated)
        third = await puller.run_once()
        assert [r.stored for r in third] == [4, 1]
    topic = pull_settings.fhir_poll.raw_topic
    records = raw_records(live_kafka, registry, topic, 305)
    assert len(records) == 305
    assert Counter(r["raw_id"] for r in records).most_common(1)[0][1] == 1
    assert {r["message_id"] for r in records} == message_ids(server, "Patient", "Observation") | {
        f"Observation/{updated['id']}/_history/1"
    }
    assert {(r["protocol"], r["connector"], r["source_facility"]) for r in records} == {
        ("fhir", "fhir_poll", "CHU-TEST")
    }
    newest = max(server.all("Patient"), key=lambda r: r["meta"]["lastUpdated"])["meta"]["lastUpdated"]
    cp = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
    assert cp.last_updated == newest
    # The normalize stage maps what the puller stored: canonical events, no dead letter.
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), {"fhir": map_fhir}
    )
    from tests.conftest import read_all

    outputs = [
        out
        for _, value in read_all(live_kafka, topic, 305, timeout_s=20)[:40]
        for out in normalizer.process(value, topic, 0, 0)
    ]
    assert outputs and {o.topic for o in outputs} <= {"canonical.patient", "canonical.observation"}


async def test_resume_after_a_stop_between_pages_loses_nothing_and_stores_nothing_twice(
    server, pull_settings, live_kafka, registry
):
    server.seed("Patient", 97, per_instant=4)  # 10 per page: instants straddle page breaks
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10)

    def stop_after_third(report: TypeReport) -> None:
        if report.pages == 3:
            raise Stop

    async with open_puller(pull_settings, source, on_page=stop_after_third) as puller:
        with pytest.raises(Stop):
            await puller.run_once()
    cp = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
    assert cp.last_updated == server.all("Patient")[29]["meta"]["lastUpdated"]
    async with open_puller(pull_settings, source) as puller:  # a new process: checkpoints from Kafka
        (report,) = await puller.run_once()
    assert report.stored == 67 and report.skipped == 2  # resources 28, 29 share the boundary instant
    records = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 97)
    assert len(records) == 97
    assert {r["message_id"] for r in records} == message_ids(server, "Patient")


async def start_pull_and_wait(
    settings: Settings, source: SourceConfig, tmp_path: Path, kafka: KafkaSettings, checkpoints: int
) -> asyncio.subprocess.Process:
    """``affluent pull <source>`` in a child process, returned once it wrote ``checkpoints`` records."""
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text(yaml.safe_dump({"sources": [source.model_dump(mode="json")]}))
    fp = settings.fhir_poll
    env = {
        **os.environ,
        "AFFLUENT_FHIR_POLL__RAW_TOPIC": fp.raw_topic,
        "AFFLUENT_FHIR_POLL__DLQ_TOPIC": fp.dlq_topic,
        "AFFLUENT_FHIR_POLL__CHECKPOINT_TOPIC": fp.checkpoint_topic,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "affluent.cli",
        "pull",
        source.name,
        "--sources",
        str(sources_file),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(fp.checkpoint_topic, 0, 0)])
    seen = 0
    try:
        while seen < checkpoints and proc.returncode is None:
            msg = await asyncio.to_thread(consumer.poll, 0.2)
            seen += msg is not None and not msg.error()
    finally:
        consumer.close()
    assert proc.returncode is None, "the pull ended before it could be killed"
    return proc


async def test_sigkilled_pull_resumes_without_loss(server, pull_settings, live_kafka, registry, tmp_path):
    server.seed("Patient", 120, per_instant=2)
    server.page_delay_s = 0.25
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10)
    fp = pull_settings.fhir_poll
    proc = await start_pull_and_wait(pull_settings, source, tmp_path, live_kafka, checkpoints=3)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    server.page_delay_s = 0
    async with open_puller(pull_settings, source) as puller:
        (report,) = await puller.run_once()
    assert report.stored < 120  # it resumed rather than started over
    records = raw_records(live_kafka, registry, fp.raw_topic, 120)
    assert {r["message_id"] for r in records} == message_ids(server, "Patient")
    # A page stored but not yet checkpointed when killed is stored again, with the same raw ids.
    assert len(records) - len({r["raw_id"] for r in records}) <= 10


async def test_bulk_export_flow(server, pull_settings, live_kafka, registry, monkeypatch):
    server.seed("Patient", 120)
    server.seed("Observation", 80)
    server.file_lines = 50
    server.polls_before_ready = 2
    server.require_auth = True
    server.static_tokens = {"bulk-t0ken"}
    monkeypatch.setenv("TEST_FHIR_TOKEN", "bulk-t0ken")
    source = source_of(
        server.base_url + "/fhir", mode="bulk", auth={"kind": "static", "token_env": "TEST_FHIR_TOKEN"}
    )
    async with open_puller(pull_settings, source) as puller:
        reports = await puller.run_once()
        assert {(r.rtype, r.stored, r.pages) for r in reports} == {
            ("Patient", 120, 3),
            ("Observation", 80, 2),
        }
        transaction_time = reports[0].checkpoint
        assert transaction_time and all(r.checkpoint == transaction_time for r in reports)
        assert not server._jobs and ("DELETE", server.requests[-1][1]) == server.requests[-1]
        assert server.refused == 0  # status and NDJSON files were fetched with the token
        server.seed("Patient", 7)
        second = await puller.run_once()
        assert {(r.rtype, r.stored) for r in second} == {("Patient", 7), ("Observation", 0)}
        assert server.queries[-1]["_since"] == transaction_time
    polls = [p for m, p in server.requests if m == "GET" and p.startswith("/bulkstatus/")]
    assert len(polls) == 6  # 2 × (202, 202, 200): Retry-After honoured, polled until ready
    records = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 207)
    assert len(records) == 207
    assert {r["message_id"] for r in records} == message_ids(server, "Patient", "Observation")
    assert {r["attributes"]["mode"] for r in records} == {"bulk"}
    cp = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Observation")
    assert cp.last_updated == second[0].checkpoint and cp.last_updated > transaction_time


def write_key(path: Path, algorithm: str) -> Any:
    key = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


async def test_smart_backend_services_refresh_on_401(server, pull_settings, live_kafka, registry, tmp_path):
    key = write_key(tmp_path / "smart.pem", "ES384")
    server.clients = {"affluent-eds": key.public_key()}
    server.require_auth = True
    server.seed("Patient", 60)
    auth = {
        "kind": "smart",
        "client_id": "affluent-eds",
        "private_key_file": str(tmp_path / "smart.pem"),
        "algorithm": "ES384",
        "key_id": "k1",
    }
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10, auth=auth)

    def revoke_after_second(report: TypeReport) -> None:
        if report.pages == 2:
            server.expire_tokens()

    async with open_puller(pull_settings, source, on_page=revoke_after_second) as puller:
        (report,) = await puller.run_once()
    assert report.stored == 60
    assert server.token_requests == 2  # the first token, and one more after the 401
    assert server.refused == 1
    assert ("GET", "/fhir/.well-known/smart-configuration") in server.requests


async def test_smart_token_refreshed_before_expiry(server, pull_settings, tmp_path):
    key = write_key(tmp_path / "smart.pem", "RS384")
    server.clients = {"affluent-eds": key.public_key()}
    server.require_auth = True
    server.token_lifetime_s = 61
    server.page_delay_s = 0.3  # ten pages take at least 3 s: past the refresh point below
    server.seed("Patient", 100)
    auth = {
        "kind": "smart",
        "client_id": "affluent-eds",
        "private_key_file": str(tmp_path / "smart.pem"),
        "token_url": server.base_url + "/auth/token",
        "refresh_margin_s": 60,
    }
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10, auth=auth)
    async with open_puller(pull_settings, source) as puller:
        (report,) = await puller.run_once()
    assert report.stored == 100
    assert server.token_requests >= 2 and server.refused == 0


async def test_static_token_refused_is_a_clear_error(server, pull_settings, monkeypatch):
    server.require_auth = True
    server.static_tokens = {"right"}
    server.seed("Patient", 3)
    monkeypatch.setenv("TEST_FHIR_TOKEN", "wrong")
    source = source_of(server.base_url + "/fhir", auth={"kind": "static", "token_env": "TEST_FHIR_TOKEN"})
    async with open_puller(pull_settings, source) as puller:
        with pytest.raises(FhirSourceError, match=r"Patient search refused the fresh token \(401\)"):
            await puller.run_once()


async def test_429_and_500_then_recovery_and_the_retry_bound(server, pull_settings, live_kafka, registry):
    server.seed("Patient", 50)
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10)
    server.fail_next(2, 429, retry_after="0", path="/fhir/Patient")
    server.fail_next(1, 500, path="/fhir/Patient")
    async with open_puller(pull_settings, source) as puller:
        (report,) = await puller.run_once()
        assert report.stored == 50
        assert sum(1 for m, p in server.requests if p == "/fhir/Patient") == 8  # 3 failures + 5 pages
        before = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
        server.seed("Patient", 5)
        server.fail_next(10, 503, retry_after="0", path="/fhir/Patient")
        with pytest.raises(
            FhirSourceError, match=r"Patient search failed after 4 attempts \(last: HTTP 503\)"
        ):
            await puller.run_once()
    after = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
    assert after == before
    assert len(raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 50)) == 50


async def test_broker_down_leaves_the_checkpoint_behind(server, pull_settings, live_kafka, registry):
    server.seed("Patient", 30)
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=10)
    dead = KafkaSettings(bootstrap_servers="127.0.0.1:1", delivery_timeout_ms=1500)
    async with open_puller(pull_settings, source) as puller:
        live_writer = puller.writer
        dead_producer = DurableProducer(dead)
        puller.writer = RawWriter(dead_producer, live_writer.codec, live_writer.topic)
        try:
            with pytest.raises(KafkaUnavailable):
                await puller.run_once()
        finally:
            await asyncio.to_thread(dead_producer.close, 1)
        cp = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
        assert cp == Checkpoint()  # nothing acknowledged, so nothing checkpointed
        puller.writer = live_writer  # Kafka is back
        (report,) = await puller.run_once()
    assert report.stored == 30
    records = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 30)
    assert {r["message_id"] for r in records} == message_ids(server, "Patient")


async def test_follow_keeps_pulling_through_failures_and_reset_resyncs(
    server, pull_settings, live_kafka, registry
):
    from connectors.fhir_poll.cli import reset

    server.seed("Patient", 12)
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=5, interval_s=0.2)
    registry_metrics = CollectorRegistry()
    stop = asyncio.Event()
    async with open_puller(pull_settings, source, registry_metrics) as puller:
        follower = asyncio.create_task(puller.follow(stop))
        try:
            stored = registry_metrics.get_sample_value
            labels = {"source": source.name, "type": "Patient"}

            async def until(count: float) -> None:
                for _ in range(400):
                    if (stored("affluent_fhir_pull_resources_total", labels) or 0) >= count:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"fewer than {count} resources stored")

            await until(12)
            server.fail_next(10, 503, retry_after="0", path="/fhir/Patient")  # a pass fails past the bound
            server.seed("Patient", 3)
            await until(15)
        finally:
            stop.set()
            await asyncio.wait_for(follower, 10)
    failed = registry_metrics.get_sample_value(
        "affluent_fhir_pull_passes_total", {"source": source.name, "outcome": "failed"}
    )
    assert failed and failed >= 1
    records = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 15)
    assert len(records) == 15
    # A reset forgets the checkpoint: the next pass stores everything again, under the same raw ids.
    assert await reset(pull_settings, source, []) == ["Patient"]
    async with open_puller(pull_settings, source) as puller:
        (report,) = await puller.run_once()
    assert report.stored == 15
    again = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 30)
    assert len(again) == 30 and len({r["raw_id"] for r in again}) == 15


async def test_unusable_resources_become_dead_letters_and_do_not_block(
    server, pull_settings, live_kafka, registry
):
    server.seed("Patient", 20)
    # A match without an id: stored nowhere as raw, so it must be a dead letter (with its reason).
    server.resources["Patient"]["broken"] = {
        "resourceType": "Patient",
        "meta": {"versionId": "1", "lastUpdated": server.all("Patient")[10]["meta"]["lastUpdated"]},
    }
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], page_size=8)
    async with open_puller(pull_settings, source) as puller:
        (report,) = await puller.run_once()
        assert (report.stored, report.dead) == (20, 1)
        server.garbage_line = b'{"resourceType": "Patient", "id": "x"'
        await puller.store.reset(source.name, "Patient")  # a full export, not one _since the search
        bulk_puller = dataclasses.replace(puller, source=source.model_copy(update={"mode": "bulk"}))
        bulk = await bulk_puller.run_once()
    assert (bulk[0].stored, bulk[0].dead) == (20, 2)  # the id-less resource and the cut line
    letters = raw_records(live_kafka, registry, pull_settings.fhir_poll.dlq_topic, 3)
    assert sorted(d["reason_code"] for d in letters) == ["fhir_unusable_resource"] * 3
    assert {d["source"]["connector"] for d in letters} == {"fhir_poll"}
    assert any(d["raw_payload"] == b'{"resourceType": "Patient", "id": "x"' for d in letters)
    cp = checkpoint_of(live_kafka, pull_settings.fhir_poll.checkpoint_topic, source.name, "Patient")
    assert cp.last_updated == bulk[0].checkpoint  # the pass went on and moved past them


async def test_sigkilled_bulk_pull_resumes_the_pending_export(
    server, pull_settings, live_kafka, registry, tmp_path
):
    server.seed("Patient", 40)
    server.polls_before_ready = 10_000  # the export "takes hours"
    source = source_of(server.base_url + "/fhir", resource_types=["Patient"], mode="bulk")
    # One record in the checkpoint topic: the pending export, written right after the kick-off.
    proc = await start_pull_and_wait(pull_settings, source, tmp_path, live_kafka, checkpoints=1)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    server.polls_before_ready = 0  # the export finishes
    async with open_puller(pull_settings, source) as puller:
        assert puller.store.pending_export(source.name) is not None
        (report,) = await puller.run_once()
        assert puller.store.pending_export(source.name) is None
    assert report.stored == 40
    assert sum(1 for m, p in server.requests if p == "/fhir/$export") == 1  # not asked twice
    assert not server._jobs  # and released when done
    records = raw_records(live_kafka, registry, pull_settings.fhir_poll.raw_topic, 40)
    assert {r["message_id"] for r in records} == message_ids(server, "Patient")
