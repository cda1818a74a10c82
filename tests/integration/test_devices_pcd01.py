"""IHE PCD-01 from a home gateway through the real MLLP door, then the real normalize stage: MDC codes,
the MDS/VMD/channel/metric position, each device's EUI-64 and UCUM units reach canonical Observations."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.settings import MllpSettings, Settings
from connectors.mllp.service import MllpService
from schemas.registry import Registry, decode
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from tests.support.golden import GOLDEN_HL7
from tests.support.mllp_client import MllpClient, control_id_of_ack, with_control_id

pytestmark = [pytest.mark.integration]

EUI64 = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
MDC = "urn:iso:std:iso:11073:10101"


async def test_pcd01_through_mllp_reaches_canonical_observations(
    settings: Settings, registry: Registry, reader
) -> None:
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        settings.model_copy(update={"mllp": MllpSettings(port=0, metrics_port=None)}),
        CollectorRegistry(),
        raw_topic=f"it.pcd01.raw.{suffix}",
        dlq_topic=f"it.pcd01.dlq.{suffix}",
        ack_topic=f"it.pcd01.ack.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    try:
        message, control_id = with_control_id((GOLDEN_HL7 / "oru_r01_pcd01_home.hl7").read_bytes())
        client = await MllpClient.connect("127.0.0.1", port)
        try:
            (ack,) = await client.request(message)
        finally:
            await client.close()
    finally:
        await service.stop()
    assert control_id_of_ack(ack) == ("AA", control_id)
    records = reader(service.raw_topic, 1, partitions=3)
    assert len(records) == 1
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), {"hl7v2": map_hl7}
    )
    outputs = normalizer.process(records[0][1], service.raw_topic, 0, 0)
    observations = [decode(registry, o.value) for o in outputs if o.topic == "canonical.observation"]
    got = {
        o["code"]["code"]: (
            o["code"]["system"],
            o["value_quantity"]["value"],
            o["value_quantity"]["unit"],
            o["device"]["id"],
            o["device"]["id_system"],
            o["device"]["hierarchy"],
            o["effective_time"].isoformat(),
            o["category"],
        )
        for o in observations
    }
    assert got == {
        "150021": (
            MDC,
            132.0,
            "mm[Hg]",
            "0012A3FFFE4B5C70",
            EUI64,
            "1.0.1.1",
            "2026-11-24T08:15:00+00:00",
            "device",
        ),
        "150022": (
            MDC,
            84.0,
            "mm[Hg]",
            "0012A3FFFE4B5C70",
            EUI64,
            "1.0.1.2",
            "2026-11-24T08:15:00+00:00",
            "device",
        ),
        "150023": (
            MDC,
            100.0,
            "mm[Hg]",
            "0012A3FFFE4B5C70",
            EUI64,
            "1.0.1.3",
            "2026-11-24T08:15:00+00:00",
            "device",
        ),
        "149546": (
            MDC,
            71.0,
            "/min",
            "0012A3FFFE4B5C70",
            EUI64,
            "1.0.0.1",
            "2026-11-24T08:15:00+00:00",
            "device",
        ),
        "150364": (
            MDC,
            37.4,
            "Cel",
            "0012A3FFFE4B5C71",
            EUI64,
            "2.0.0.1",
            "2026-11-24T08:12:00+00:00",
            "device",
        ),
        "188736": (
            MDC,
            74.978819,
            "kg",
            "0012A3FFFE4B5C72",
            EUI64,
            "3.0.0.1",
            "2026-11-24T08:08:00+00:00",
            "device",
        ),
    }
    assert {o["patient"]["key"] for o in observations} == {"00900101@1.2.250.1.71.4.2.7.99"}
