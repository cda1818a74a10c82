"""The normalize worker: the stage shell (streams/app.py) over the raw topics around :class:`Normalizer`.

Batches are processed in order per partition; the canonical outputs of a batch are confirmed by Kafka
(``acks=all``) before the batch's input offsets are stored for commit. A crash anywhere therefore
replays inputs — and the deterministic event ids make the replayed outputs identical — but never skips
one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from affluent.core.compacted import CompactedView
from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.settings import Settings
from affluent.core.topics import (
    COMPACTED_CONFIG,
    CONTROL_DEVICES,
    INGEST_DEVICE_RAW,
    INGEST_FHIR_RAW,
    INGEST_HL7V2_RAW,
)
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE
from schemas.readiness import dependencies
from schemas.registry import Registry
from streams.app import StageWorker, run_until_signalled
from streams.contract import StageSpec
from streams.normalize.options import MappingOptions
from streams.normalize.stage import Mapper, NormalizeMetrics, Normalizer

log = logging.getLogger(__name__)

RAW_TOPICS = (INGEST_HL7V2_RAW, INGEST_FHIR_RAW, INGEST_DEVICE_RAW)


def default_mappers(device: Mapper | None = None) -> dict[str, Mapper]:
    from streams.normalize.fhir import map_fhir
    from streams.normalize.hl7 import map_hl7

    mappers: dict[str, Mapper] = {"hl7v2": map_hl7, "fhir": map_fhir}
    if device is not None:
        mappers["device"] = device
    return mappers


def device_mapper(settings: Settings) -> Mapper:
    """The device mapper over the templates and the device registry (read to its end before starting)."""
    from formats.devices.registry import DeviceRegistry
    from formats.devices.templates import load_templates
    from streams.normalize.device import DeviceMapper

    templates = load_templates(settings.devices.templates_dir)
    ensure_topics(settings.kafka, [TopicSpec(CONTROL_DEVICES, config=COMPACTED_CONFIG)])
    view = CompactedView(settings.kafka, CONTROL_DEVICES, name="device-registry")
    view.start()
    skew = timedelta(seconds=settings.devices.max_future_skew_s)
    return DeviceMapper(templates, DeviceRegistry(view.get), skew)


def build_worker(
    settings: Settings,
    metrics_registry: CollectorRegistry | None = None,
    raw_topics: tuple[str, ...] = RAW_TOPICS,
) -> StageWorker:
    s = settings
    wait_for_kafka(s.kafka, 30)
    ensure_topics(s.kafka, [TopicSpec(t) for t in (*raw_topics, *CANONICAL_TOPICS, DLQ_NORMALIZE)])
    metrics_registry = metrics_registry or CollectorRegistry()
    registry = Registry(s.registry)
    registry.wait_until_reachable()  # a registry outage delays the start, it does not crash-loop it
    normalizer = Normalizer(
        registry,
        MappingOptions(timezone=ZoneInfo(s.streams.timezone)),
        NormalizeMetrics(metrics_registry),
        default_mappers(device_mapper(s)),
    )
    return StageWorker(
        StageSpec(s.streams.normalize_group, raw_topics, normalizer.process),
        s.kafka,
        s.streams,
        metrics_registry,
        s.streams.metrics_port,
        ready=dependencies(s.kafka, s.registry),
    )


def run(settings: Settings, raw_topics: tuple[str, ...] = RAW_TOPICS) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM (the batch in hand finishes, then commit)."""
    run_until_signalled(build_worker(settings, raw_topics=raw_topics))
