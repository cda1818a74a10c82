"""Shared fixtures. Integration tests talk to the real local stack that `make up` starts."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer, wait_for_kafka
from affluent.core.settings import KafkaSettings, Settings, load_settings
from schemas.registry import Registry


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def live_kafka(settings: Settings) -> KafkaSettings:
    """The running local Kafka; fails (does not skip) when it is down: these tests must cross the boundary."""
    try:
        wait_for_kafka(settings.kafka, timeout_s=15)
    except KafkaUnavailable as exc:
        pytest.fail(f"{exc}. Start the local stack with 'make up'.")
    return settings.kafka


@pytest.fixture(scope="session")
def registry(settings: Settings, live_kafka: KafkaSettings) -> Registry:
    reg = Registry(settings.registry)
    reg.subjects()  # fails loudly if the registry is not there
    return reg


@pytest.fixture
def new_topic(live_kafka: KafkaSettings) -> Callable[..., str]:
    """Create a uniquely named topic so tests never see each other's records."""

    def make(prefix: str = "test", partitions: int = 1, **config: str) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        ensure_topics(live_kafka, [TopicSpec(name, partitions=partitions, config=config)])
        return name

    return make


def read_all(
    kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 20.0, partitions: int = 1
) -> list[tuple[bytes | None, bytes | None]]:
    """Read a topic from the beginning until `expected` records came or the timeout passed."""
    import time

    consumer: Consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key(), msg.value()))
        # give a little time for unexpected extra records to show up
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


@pytest.fixture
def reader(live_kafka: KafkaSettings) -> Iterator[Callable[..., list[tuple[bytes | None, bytes | None]]]]:
    def read(topic: str, expected: int, timeout_s: float = 20.0, partitions: int = 1):
        return read_all(live_kafka, topic, expected, timeout_s, partitions)

    yield read
