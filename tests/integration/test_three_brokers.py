"""Three KRaft nodes, RF 3, min ISR 2: acks=all writes survive a SIGKILLed broker; nothing acked is lost."""

from __future__ import annotations

import time

import pytest

from affluent.core.errors import KafkaUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, make_admin, make_producer
from affluent.core.settings import StackSettings
from affluent.local.stack import LocalStack
from tests.conftest import read_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path):
    stack = LocalStack(StackSettings(state_dir=tmp_path / "state3", kafka_port=29092), brokers=3)
    stack.up(registry=False)
    yield stack
    stack.down(wipe=True)


def test_acks_all_writes_continue_after_a_broker_is_killed(cluster):
    kafka = cluster.kafka_settings()
    assert kafka.replication_factor == 3
    for attempt in range(10):  # a just-formed 3-node quorum may drop the first admin request
        try:
            ensure_topics(kafka, [TopicSpec("fault.rf3", partitions=3)])
            break
        except KafkaUnavailable:
            assert attempt < 9, "the cluster never accepted the topic"
            time.sleep(2)
    admin = make_admin(kafka)
    deadline = time.monotonic() + 30
    while True:  # each broker learns of a new topic on its own schedule: ask until this one has it
        topic_md = admin.list_topics(timeout=10).topics.get("fault.rf3")
        if (
            topic_md is not None
            and topic_md.partitions
            and all(p.leader >= 0 for p in topic_md.partitions.values())
        ):
            break
        assert time.monotonic() < deadline, "topic metadata never showed fault.rf3 with leaders"
        time.sleep(0.2)
    assert all(len(p.replicas) == 3 for p in topic_md.partitions.values())
    leader = topic_md.partitions[0].leader

    producer = make_producer(kafka)
    acked: list[bytes] = []

    def on_delivery(err, msg):
        if err is None:
            acked.append(msg.value())

    for i in range(300):
        producer.produce(
            "fault.rf3", key=str(i % 7).encode(), value=f"before-{i}".encode(), on_delivery=on_delivery
        )
    assert producer.flush(30) == 0

    cluster.kill_node(leader)
    assert not next(s for s in cluster.status() if s.name == f"kafka-{leader}").running

    for i in range(300):
        producer.produce(
            "fault.rf3", key=str(i % 7).encode(), value=f"after-{i}".encode(), on_delivery=on_delivery
        )
    assert producer.flush(60) == 0
    assert len(acked) == 600, "with 2 of 3 replicas in sync, acks=all writes must all be acknowledged"

    got = read_all(kafka, "fault.rf3", expected=600, timeout_s=60, partitions=3)
    values = sorted(v for _, v in got)
    assert values == sorted(acked)

    cluster.start_node(leader)  # the killed broker rejoins
    cluster._wait_kafka([])
    assert all(s.running for s in cluster.status() if s.name.startswith("kafka"))
