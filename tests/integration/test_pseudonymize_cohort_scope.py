"""The pseudonymize stage with a cohort-scoped destination (the real registry, the shipped policies and
the test keys): a canonical record feeds only the other destinations; the same record on
``cohort.inca.<kind>`` (written there by the cohort stage for a member) feeds INCa only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.topics import INGEST_HL7V2_RAW
from affluent.dlq import _normalizer
from connectors.raw import RawMessage
from schemas.catalog import CANONICAL_OBSERVATION, cohort_topic
from schemas.registry import AvroCodec, Registry, load_schema
from streams.pseudonymize.stage import PseudonymizeMetrics, Pseudonymizer
from streams.pseudonymize.worker import build_feeds, cohort_scoped, load_keys
from tests.support.golden import GOLDEN_HL7
from tests.support.pipeline import KEY_FILE

pytestmark = pytest.mark.integration


def observation(settings, registry: Registry) -> bytes:
    payload = (GOLDEN_HL7 / "oru_r01_lab.hl7").read_bytes()
    raw = RawMessage("hl7v2", "mllp", "CHU-SCOPE", "LAB", payload, "x-application/hl7-v2+er7", "S-1")
    codec = AvroCodec(registry, f"{INGEST_HL7V2_RAW}-value", load_schema("raw_message"), "BACKWARD")
    outputs = _normalizer(settings).process(
        codec.encode(raw.record(datetime.now(UTC))), INGEST_HL7V2_RAW, 0, 0
    )
    value = next(o.value for o in outputs if o.topic == CANONICAL_OBSERVATION)
    assert value is not None
    return value


def test_inca_takes_cohort_topics_only_and_hdh_canonical_only(settings, registry, monkeypatch) -> None:
    monkeypatch.setenv("AFFLUENT_PSEUDO_KEY_FILE", str(KEY_FILE))
    keys = load_keys()
    assert cohort_scoped(settings) == {"inca"}  # the shipped cohorts feed INCa
    stage = Pseudonymizer(
        registry,
        build_feeds(keys),
        {},
        keys,
        PseudonymizeMetrics(CollectorRegistry()),
        scoped=frozenset({"inca"}),
    )
    value = observation(settings, registry)
    from_canonical = {o.topic for o in stage.process(value, CANONICAL_OBSERVATION, 0, 0)}
    assert from_canonical == {"national.hdh.observation.v1"}
    from_cohort = {o.topic for o in stage.process(value, cohort_topic("inca", "observation"), 0, 0)}
    assert from_cohort == {"national.inca.observation.v1"}
    assert stage.process(value, cohort_topic("hdh", "observation"), 0, 0) == []  # hdh is not scoped

    unscoped = Pseudonymizer(registry, build_feeds(keys), {}, keys, PseudonymizeMetrics(CollectorRegistry()))
    both = {o.topic for o in unscoped.process(value, CANONICAL_OBSERVATION, 0, 0)}
    assert both == {"national.hdh.observation.v1", "national.inca.observation.v1"}
