"""Shared pieces of the device tests: the sample payloads, a registry linking their devices, a context."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from affluent.sim.synthetic import HOSPITAL_OID
from formats.devices.registry import DeviceRegistry, Link, add_link, encode_links
from formats.devices.templates import load_templates
from schemas.registry import Registry, decode
from streams.normalize.device import DeviceMapper
from streams.normalize.envelope import RawContext
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from tests.support.pipeline import stop

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "devices"
SHAPES = ("bp-single", "scale-nested", "gateway-batch")
DEVICES = ("BPM-00A1B2C3", "SC-7781", "0012A3FFFE4B5C6D", "0012A3FFFE4B5C6E")
LINKED_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def sample(shape: str) -> bytes:
    return (CORPUS / f"{shape}.json").read_bytes()


def registry_entries(devices: tuple[str, ...] = DEVICES, first_ipp: int = 900100) -> dict[str, bytes]:
    """Each sample device linked since 2026-01-01 to its own synthetic IPP under the test hospital OID."""
    return {
        device: encode_links(device, add_link([], Link(f"{first_ipp + i:08d}", HOSPITAL_OID, LINKED_FROM)))
        for i, device in enumerate(devices)
    }


def context(mapping: str, received_at: datetime | None = None, connector: str = "devices_http") -> RawContext:
    return RawContext(
        raw_id="raw-device",
        protocol="device",
        connector=connector,
        facility="GW-TEST",
        application=mapping,
        message_id="m-1",
        received_at=received_at or datetime(2026, 11, 24, 9, 0, tzinfo=UTC),
        topic="ingest.device.raw",
        attributes={"mapping": mapping},
    )


def normalize_raw(
    registry: Registry, raw_values: list[bytes], entries: dict[str, bytes] | None = None, topic: str = "raw"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the real Normalizer (registry codecs) over raw records read back from Kafka; returns the
    decoded canonical observations and dead letters."""
    mapper = DeviceMapper(
        load_templates(), DeviceRegistry((registry_entries() if entries is None else entries).get)
    )
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), {"device": mapper}
    )
    observations: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for offset, value in enumerate(raw_values):
        for out in normalizer.process(value, topic, 0, offset):
            assert out.value is not None  # a stage's outputs always carry a value (no tombstones)
            record = decode(registry, out.value)
            (observations if out.topic == "canonical.observation" else dead).append(record)
    return observations, dead


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def normalize_worker(raw_topic: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real normalize worker in its own process, its own consumer group, reading one raw topic."""
    code = (
        "from affluent.core.settings import load_settings\n"
        "from streams.normalize.worker import run\n"
        f"run(load_settings(), ({raw_topic!r},))\n"
    )
    env = {
        **os.environ,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": f"test-devices-{uuid.uuid4().hex[:8]}",
        "AFFLUENT_STREAMS__METRICS_PORT": str(_free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        stop(proc)
