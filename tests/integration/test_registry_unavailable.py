"""A registry that is away is not bad input: the stages raise RegistryUnavailable (the shell holds the
batch and retries, streams/transient.py) instead of dead-lettering a good record; a registry that answers
"no such schema id" still dead-letters it. The fault suite's registry outage shows the same end to end.
"""

from __future__ import annotations

import struct

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.errors import RegistryError, RegistryUnavailable
from affluent.core.settings import RegistrySettings
from affluent.core.topics import INGEST_HL7V2_RAW
from schemas.registry import Registry
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from streams.normalize.worker import default_mappers
from streams.transient import when_registry_back
from tests.support.pipeline import free_port

pytestmark = pytest.mark.integration

UNKNOWN_ID = 2_000_000_000


def framed(schema_id: int) -> bytes:
    return struct.pack(">bI", 0, schema_id) + b"\x02x"


def away() -> Registry:
    """A registry client whose server is not there (nothing listens on the port)."""
    return Registry(RegistrySettings(url=f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", timeout_s=2))


def test_a_registry_that_is_away_is_transient_an_unknown_id_is_not(registry):
    with pytest.raises(RegistryUnavailable):
        away().writer_schema(1)
    with pytest.raises(RegistryError) as refused:
        registry.writer_schema(UNKNOWN_ID)
    assert not isinstance(refused.value, RegistryUnavailable)


def test_normalize_raises_rather_than_dead_letters_while_the_registry_is_away(registry):
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), default_mappers()
    )
    (dead,) = normalizer.process(framed(UNKNOWN_ID), INGEST_HL7V2_RAW, 0, 0)
    assert dead.topic == "dlq.normalize"  # the registry answered: this id does not exist
    normalizer.registry = away()  # a fresh client: nothing cached, every id needs the registry
    with pytest.raises(RegistryUnavailable):
        normalizer.process(framed(1), INGEST_HL7V2_RAW, 0, 1)


def test_a_held_record_is_processed_once_the_registry_answers():
    calls = []

    def process(value: bytes | None, topic: str, partition: int, offset: int) -> list[str]:
        calls.append(offset)
        if len(calls) < 3:
            raise RegistryUnavailable("away")
        return [f"{topic}:{offset}"]

    pauses: list[float] = []
    out = when_registry_back(process, b"", "t", 0, 7, "g", sleep=pauses.append)
    assert out == ["t:7"] and calls == [7, 7, 7]
    assert pauses == [0.5, 1.0, 2.0], "backing off between tries"
