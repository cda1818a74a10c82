"""BAR^P01/P05/P12 over real MLLP sockets against the real broker and registry (issue #19, first bullet).

The door answers AA (CA in enhanced mode) only after the raw record is in Kafka, stores the bytes
untouched, refuses a BAR event the hub does not map with AR 201; the stored raw record then goes
through the normalize stage (in process, real registry) to canonical Conditions and Procedures.
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.settings import MllpSettings, Settings
from connectors.mllp.service import MllpService
from schemas.registry import decode
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from tests.support.golden import GOLDEN_HL7
from tests.support.mllp_client import MllpClient, control_id_of_ack, with_control_id

pytestmark = pytest.mark.integration

BAR_CASES = ("bar_p01_add_accounts", "bar_p05_update_account", "bar_p12_update_diagnoses")


@pytest.fixture
async def door(settings: Settings, live_kafka, registry):
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        settings.model_copy(
            update={"mllp": MllpSettings(port=0, metrics_port=None, max_frame_bytes=64 * 1024)}
        ),
        CollectorRegistry(),
        raw_topic=f"it.hl7raw.{suffix}",
        dlq_topic=f"it.dlq.{suffix}",
        ack_topic=f"it.ack.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    service.port = port  # type: ignore[attr-defined]
    yield service
    await service.stop()


async def test_bar_messages_are_acknowledged_stored_and_mapped(door, reader, registry):
    client = await MllpClient.connect("127.0.0.1", door.port)
    sent: dict[str, bytes] = {}
    for case in BAR_CASES:
        original = (GOLDEN_HL7 / f"{case}.hl7").read_bytes().replace(b"|AL|NE|", b"|||", 1)
        payload, control_id = with_control_id(original)
        replies = await client.request(payload)
        assert control_id_of_ack(replies[0]) == ("AA", control_id), case
        sent[control_id] = payload
    refused, refused_id = with_control_id(
        (GOLDEN_HL7 / "bar_p01_add_accounts.hl7").read_bytes().replace(b"BAR^P01^BAR_P01", b"BAR^P02^BAR_P02")
    )
    code, echoed = control_id_of_ack((await client.request(refused))[0])
    assert (code, echoed) == ("CR", refused_id)  # AL/NE kept: enhanced mode, commit reject
    await client.close()

    raws = reader(door.raw_topic, len(sent), 20.0, partitions=3)
    records = [decode(registry, value) for _, value in raws]
    assert sorted(r["message_id"] for r in records) == sorted(sent)  # P02 was not stored
    assert {r["message_type"] for r in records} == {"BAR^P01", "BAR^P05", "BAR^P12"}
    for record in records:
        assert record["payload"] == sent[record["message_id"]]  # untouched bytes

    stage = Normalizer(registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), {"hl7v2": map_hl7})
    topics: list[str] = []
    for _, value in raws:
        for output in stage.process(value, door.raw_topic, 0, 0):
            topics.append(output.topic)
            canonical = decode(registry, output.value)
            assert canonical["patient"]["key"].endswith("@1.2.250.1.71.4.2.7")
    assert topics.count("canonical.patient") == 3
    assert topics.count("canonical.condition") == 2 + 3 + 2
    assert topics.count("canonical.procedure") == 3 + 0 + 1
    assert "dlq.normalize" not in topics
