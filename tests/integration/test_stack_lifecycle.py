"""The local stack is idempotent and keeps its data across a restart (its own ports and state folder)."""

from __future__ import annotations

import uuid

import pytest

from affluent.core.kafka import TopicSpec, ensure_topics, make_admin
from affluent.core.settings import RegistrySettings, StackSettings
from affluent.local.stack import LocalStack
from schemas.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def side_stack(tmp_path):
    stack = LocalStack(
        StackSettings(
            state_dir=tmp_path / "state",
            kafka_port=39092,
            registry_port=38081,
            registry_management_port=39011,
        )
    )
    yield stack
    stack.down(wipe=True)


def test_up_twice_is_a_no_op_and_down_up_keeps_topics_and_schemas(side_stack):
    side_stack.up()
    pids = {s.name: s.pid for s in side_stack.status()}
    assert all(pids.values()), pids

    side_stack.up()  # second call: nothing restarted
    assert {s.name: s.pid for s in side_stack.status()} == pids

    kafka = side_stack.kafka_settings()
    topic = f"lifecycle.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(topic, partitions=2)])
    registry = Registry(RegistrySettings(url=side_stack.registry_url))
    schema = '{"type":"record","name":"Kept","namespace":"t","fields":[{"name":"x","type":"long"}]}'
    schema_id = registry.register(f"{topic}-value", schema, "FULL_TRANSITIVE")

    side_stack.down()
    assert not any(s.running for s in side_stack.status())
    side_stack.up()
    assert all(s.running for s in side_stack.status())

    assert topic in make_admin(kafka).list_topics(timeout=10).topics
    registry = Registry(RegistrySettings(url=side_stack.registry_url))
    assert f"{topic}-value" in registry.subjects()
    assert registry.get_compatibility(f"{topic}-value") == "FULL_TRANSITIVE"
    assert registry.register(f"{topic}-value", schema) == schema_id
