"""Probe records for a network path: synthetic national events written at a hospital, found again upstream.

The network tests and the replication benchmark both need to answer one question — did every event
written at the bottom reach the top, decodable with the top's own registry? — so the answer lives here
once. The events are synthetic retractions (the smallest national schema) with random pseudonyms: they
carry no personal data and are easy to tell apart by their ``event_id``.
"""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from affluent.core.errors import AffluentError, KafkaUnavailable
from affluent.core.kafka import make_consumer, make_producer
from affluent.core.settings import KafkaSettings, NetworkSettings, StackSettings
from affluent.local.network import Network, plan_topology
from schemas.catalog import entry_for, schema_text
from schemas.registry import AvroCodec, Registry, decode

PROBE_TOPIC = "national.hdh.retraction.v1"


def free_port_block(size: int) -> int:
    """A base port whose `size` following ports are all free now (random start: parallel runs differ)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - size, 10)
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AffluentError("no free block of loopback ports for a private network")


def private_network(
    stack: StackSettings, net: NetworkSettings, state: Path, levels: list[str], hospitals: int = 1
) -> Network:
    """A network of its own (free ports, own state folder) for a test or a benchmark; stopped on failure."""
    topology = plan_topology(levels, hospitals)
    settings = net.model_copy(
        update={"state_dir": state, "base_port": free_port_block(10 * len(topology.clusters))}
    )
    network = Network(stack, settings, topology)
    try:
        network.up()
    except BaseException:
        network.down(wipe=True)
        raise
    return network


def probe_event(event_id: str, now_us: int) -> dict[str, Any]:
    """A national retraction that satisfies the schema and names nobody."""
    return {
        "envelope": {
            "event_id": event_id,
            "event_type": "retraction.issued",
            "source": {
                "facility": "PROBE",
                "application": "affluent",
                "connector": "mllp",
                "protocol": "hl7v2",
            },
            "event_time": None,
            "event_time_precision": None,
            "ingest_time": now_us,
            "schema_version": 1,
        },
        "patient": {"pseudonym": uuid.uuid4().hex, "linkable": False, "key_id": "probe"},
        "kind": "CANCEL",
        "target_event_ids": [],
        "target_source_reference": None,
        "retired_patient": None,
        "reason_code": None,
    }


def probe_codec(registry: Registry, topic: str = PROBE_TOPIC) -> AvroCodec:
    entry = entry_for(topic)
    return AvroCodec(registry, entry.subject, schema_text(entry), entry.compatibility)


def new_event_ids(count: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(count)]


def produce_events(
    kafka: KafkaSettings, codec: AvroCodec, event_ids: Iterable[str], topic: str = PROBE_TOPIC
) -> int:
    """Write one probe event per id (keyed by it) and return once Kafka acknowledged them all."""
    producer = make_producer(kafka, **{"linger.ms": 5})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    now_us = int(time.time() * 1_000_000)
    count = 0
    for event_id in event_ids:
        value = codec.encode(probe_event(event_id, now_us))
        while True:
            try:
                producer.produce(topic, key=event_id.encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise KafkaUnavailable(f"{remaining + len(failures)} probe event(s) not acknowledged")
    return count


def collect_events(
    kafka: KafkaSettings,
    registry: Registry,
    expected: set[str],
    timeout_s: float,
    topic: str = PROBE_TOPIC,
) -> Counter[str]:
    """How many times each expected event_id is in `topic`, decoding every value with `registry`.

    Reads from the beginning until every expected id was seen or the timeout passed; ids that are not
    expected (other runs) are ignored, duplicates of expected ones are counted.
    """
    consumer = make_consumer(kafka, group_id=f"probe-{uuid.uuid4().hex[:8]}")
    seen: Counter[str] = Counter()

    def take(timeout: float) -> None:
        msg = consumer.poll(timeout)
        value = None if msg is None or msg.error() else msg.value()
        if value is None:
            return
        event_id = str(decode(registry, value)["envelope"]["event_id"])
        if event_id in expected:
            seen[event_id] += 1

    try:
        md = consumer.list_topics(topic, timeout=10)
        partitions = md.topics[topic].partitions if topic in md.topics else {}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not expected <= seen.keys():
            take(0.5)
        # a moment more so that duplicates right behind the last new id are counted too
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            take(0.2)
    finally:
        consumer.close()
    return seen
