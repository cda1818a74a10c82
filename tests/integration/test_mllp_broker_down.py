"""Kafka stopped mid-stream: the sender gets AR/CR, never AA; once Kafka is back, its resend is stored once.

Runs its own single-node Kafka (own ports and state folder) so that stopping it disturbs no other test;
the schema registry is the shared local one (schemas are registered before the broker goes down).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.settings import KafkaSettings, MllpSettings, StackSettings
from affluent.local.stack import LocalStack
from connectors.mllp.service import MllpService
from schemas.registry import decode
from tests.conftest import read_all
from tests.support.mllp_client import MllpClient, control_id_of_ack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADT = "MSH|^~\\&|PAS|CHU|AFF|HUB|20261124||ADT^A01|{cid}|P|2.5{modes}\rPID|||7^^^CHU^PI||PETIT^Anaïs\r"


@pytest.fixture
def side_kafka(tmp_path):
    stack = LocalStack(StackSettings(state_dir=tmp_path / "kafka", kafka_port=49092))
    stack.up(registry=False)
    yield stack
    stack.down(wipe=True)


async def test_broker_down_gives_ar_then_resend_succeeds_without_duplicates(settings, registry, side_kafka):
    kafka = KafkaSettings(bootstrap_servers=side_kafka.bootstrap_servers, delivery_timeout_ms=3000)
    door_settings = settings.model_copy(
        update={"kafka": kafka, "mllp": MllpSettings(port=0, metrics_port=None)}
    )
    raw_topic = f"it.down.raw.{uuid.uuid4().hex[:6]}"
    service = MllpService(door_settings, CollectorRegistry(), raw_topic=raw_topic)
    port = await service.start(with_telemetry=False)
    try:
        client = await MllpClient.connect("127.0.0.1", port)
        first = uuid.uuid4().hex[:12]
        assert control_id_of_ack(
            (await client.request(ADT.format(cid=first, modes="").encode("latin-1")))[0]
        ) == (
            "AA",
            first,
        )

        await asyncio.to_thread(side_kafka.down)  # the broker goes away mid-stream

        second = uuid.uuid4().hex[:12]
        original = ADT.format(cid=second, modes="").encode("latin-1")
        code, echoed = control_id_of_ack((await client.request(original, timeout=30))[0])
        assert (code, echoed) == ("AR", second), "never AA while Kafka cannot store the message"

        enhanced_id = uuid.uuid4().hex[:12]
        enhanced = ADT.format(cid=enhanced_id, modes="|||AL|NE").encode("latin-1")
        assert control_id_of_ack((await client.request(enhanced, timeout=30))[0]) == ("CR", enhanced_id)

        await asyncio.to_thread(side_kafka.up, False)  # back

        # the sender retries until accepted, as an interface engine does
        for payload, cid, ok in ((original, second, "AA"), (enhanced, enhanced_id, "CA")):
            deadline = time.monotonic() + 60
            while True:
                code, echoed = control_id_of_ack((await client.request(payload, timeout=30))[0])
                assert echoed == cid
                if code == ok:
                    break
                assert code in ("AR", "CR")
                assert time.monotonic() < deadline, "the door did not recover after Kafka came back"
                await asyncio.sleep(1)
        # one more resend of an accepted message: replayed ACK, not stored again
        assert control_id_of_ack((await client.request(original))[0]) == ("AA", second)
        await client.close()
    finally:
        await service.stop()

    records = [decode(registry, v) for _, v in read_all(kafka, raw_topic, 3, timeout_s=20, partitions=3)]
    assert sorted(r["message_id"] for r in records) == sorted([first, second, enhanced_id])
