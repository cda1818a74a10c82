"""The network on real clusters: hospital -> national (CI) and hospital x2 -> region -> national (manual).

Each module-scoped network is private to this test run: its own single-node clusters, registries and
MirrorMaker process on a free block of loopback ports, state in a temporary folder, stopped and wiped
at the end. The shared stack (9092/8081) is never touched.

The three-level network needs five JVM brokers, four registries and two MirrorMakers: it runs only when
AFFLUENT_NETWORK_THREE_LEVELS=1 (``make test-network3``).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from affluent.core.kafka import TopicSpec, ensure_topics, make_producer
from affluent.core.settings import Settings
from affluent.core.topics import CORE_TOPICS, INGEST_HL7V2_RAW
from affluent.local.netprobe import (
    PROBE_TOPIC,
    collect_events,
    new_event_ids,
    private_network,
    probe_codec,
    produce_events,
)
from affluent.local.network import Network, foreign_topics
from schemas.catalog import CANONICAL_OBSERVATION, CANONICAL_TOPICS
from schemas.registry import parse_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

CANARY = b"MSH|^~\\&|CANARY|NETWORK|||20260101000000||ADT^A01|CANARY-1|P|2.5\r"


def start_network(settings: Settings, state: Path, levels: list[str], hospitals: int) -> Network:
    return private_network(settings.stack, settings.network, state, levels, hospitals)


def topics_of(network: Network, alias: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": network.stacks[alias].bootstrap_servers})
    return sorted(admin.list_topics(timeout=10).topics)


def write_canaries(network: Network, alias: str) -> None:
    """A raw HL7 message and a canonical record at a hospital: neither may ever leave it."""
    kafka = network.kafka(alias)
    ensure_topics(kafka, [*CORE_TOPICS, *(TopicSpec(t) for t in CANONICAL_TOPICS)])
    producer = make_producer(kafka)
    producer.produce(INGEST_HL7V2_RAW, key=b"canary", value=CANARY)
    producer.produce(CANONICAL_OBSERVATION, key=b"canary", value=CANARY)
    assert producer.flush(15) == 0


def wait_for_topic_refresh(network: Network, source: str, target: str) -> None:
    """Create a national topic after the canaries and wait for it upstream.

    Once it is there, MirrorMaker has listed the source's topics since the canaries were written, so
    their absence upstream is a decision, not a matter of not having looked yet.
    """
    marker = f"national.test.refresh{uuid.uuid4().hex[:8]}.v1"
    ensure_topics(network.kafka(source), [TopicSpec(marker)])
    deadline = time.monotonic() + 60
    while marker not in topics_of(network, target):
        assert time.monotonic() < deadline, "MirrorMaker did not pick a new national topic up within 60 s"
        time.sleep(1)


@pytest.fixture(scope="module")
def two_levels(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = start_network(settings, tmp_path_factory.mktemp("network2"), ["hospital", "national"], 1)
    yield network
    network.down(wipe=True)


def test_only_national_topics_reach_national_with_decodable_schemas(two_levels: Network) -> None:
    network = two_levels
    write_canaries(network, "hospital1")
    ids = new_event_ids(300)
    codec = probe_codec(network.registry("hospital1"))
    produce_events(network.kafka("hospital1"), codec, ids)

    upstream_registry = network.registry("national")
    seen = collect_events(network.kafka("national"), upstream_registry, set(ids), timeout_s=60)
    assert set(seen) == set(ids)

    # collect_events decoded every copied value with the national registry; the id in their header
    # names the very schema the hospital wrote with.
    assert parse_schema(upstream_registry.client.get_schema(codec.schema_id).schema_str or "") == codec.schema

    wait_for_topic_refresh(network, "hospital1", "national")
    national_topics = topics_of(network, "national")
    assert PROBE_TOPIC in national_topics
    assert foreign_topics(network.topology, "national", national_topics) == []
    assert INGEST_HL7V2_RAW not in national_topics
    assert CANONICAL_OBSERVATION not in national_topics


def test_replication_metrics_are_exported_for_prometheus(two_levels: Network) -> None:
    """The JMX agent's /metrics has per-partition replication counts and latencies of the national topics.

    MirrorMaker restarts its tasks when the set of mirrored topics changes (the previous test creates
    one), and a restarted task counts from zero: a batch copied partly before such a restart never
    adds up to its size. So another batch of 20 is sent every 15 s until one task has counted 20.
    """
    hospital = two_levels.registry("hospital1")
    codec = probe_codec(hospital)
    deadline = time.monotonic() + 90
    next_batch = 0.0
    replicated = 0.0
    latency_seen = False
    while time.monotonic() < deadline and not (replicated >= 20 and latency_seen):
        if time.monotonic() >= next_batch:
            produce_events(two_levels.kafka("hospital1"), codec, new_event_ids(20))
            next_batch = time.monotonic() + 15
        with urllib.request.urlopen(two_levels.metrics_url("national"), timeout=30) as resp:
            samples = [
                s for family in text_string_to_metric_families(resp.read().decode()) for s in family.samples
            ]
        ours = [
            s
            for s in samples
            if s.labels.get("topic") == PROBE_TOPIC and s.labels.get("target") == "national"
        ]
        replicated = sum(s.value for s in ours if s.name == "mirror_source_record_count_total")
        latency_seen = any(s.name == "mirror_source_replication_latency_ms_max" for s in ours)
        time.sleep(1)
    assert replicated >= 20
    assert latency_seen
    assert any(s.name == "mirror_task_status" and s.labels["status"] == "running" for s in samples)


def test_upper_cluster_outage_loses_nothing(two_levels: Network) -> None:
    network = two_levels
    codec = probe_codec(network.registry("hospital1"))
    before, during, after = new_event_ids(200), new_event_ids(300), new_event_ids(200)
    produce_events(network.kafka("hospital1"), codec, before)

    network.stop_cluster("national")  # the national broker crashes
    produce_events(network.kafka("hospital1"), codec, during)  # the hospital keeps everything meanwhile
    network.start_cluster("national")
    produce_events(network.kafka("hospital1"), codec, after)

    expected = set(before) | set(during) | set(after)
    seen = collect_events(network.kafka("national"), network.registry("national"), expected, timeout_s=120)
    assert set(seen) == expected  # every record arrived
    assert len(set(seen)) == len(expected)  # dedup by event_id leaves exactly one per event


@pytest.mark.skipif(
    os.environ.get("AFFLUENT_NETWORK_THREE_LEVELS") != "1", reason="three levels: make test-network3"
)
def test_three_levels_two_hospitals(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    network = start_network(
        settings, tmp_path_factory.mktemp("network3"), ["hospital", "region", "national"], hospitals=2
    )
    try:
        ids = {alias: new_event_ids(200) for alias in ("hospital1", "hospital2")}
        for alias, alias_ids in ids.items():
            write_canaries(network, alias)
            produce_events(network.kafka(alias), probe_codec(network.registry(alias)), alias_ids)
        expected = set(ids["hospital1"]) | set(ids["hospital2"])

        late = new_event_ids(300)
        codec = probe_codec(network.registry("hospital1"))
        writer = threading.Thread(target=produce_events, args=(network.kafka("hospital1"), codec, late))
        network.stop_cluster("region")
        writer.start()
        writer.join()
        network.start_cluster("region")
        expected |= set(late)
        wait_for_topic_refresh(network, "hospital1", "region")
        wait_for_topic_refresh(network, "region", "national")

        seen = collect_events(
            network.kafka("national"), network.registry("national"), expected, timeout_s=180
        )
        assert set(seen) == expected
        for alias in ("region", "national"):
            topics = topics_of(network, alias)
            assert foreign_topics(network.topology, alias, topics) == [], alias
            assert INGEST_HL7V2_RAW not in topics
    finally:
        network.down(wipe=True)
