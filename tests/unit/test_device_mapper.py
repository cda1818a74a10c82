"""Device readings → canonical Observations; the device registry's periods; duplicates and clock skew."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.errors import ConfigError
from affluent.sim.synthetic import HOSPITAL_OID, INS_TEST_OID
from formats.clinical.identity import ins_key
from formats.devices.registry import DeviceRegistry, Link, add_link, decode_links, encode_links, end_link
from formats.devices.templates import load_templates
from streams.normalize.device import FLAG_SYSTEM, DeviceMapper
from streams.normalize.options import MappingOptions
from streams.normalize.result import Rejection, run_mapper
from tests.support.devices import SHAPES, context, registry_entries, sample
from tests.support.golden import avro_roundtrip, schema_errors

TEMPLATES = load_templates()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def mapper(entries: dict[str, bytes] | None = None, skew: timedelta = timedelta(minutes=5)) -> DeviceMapper:
    return DeviceMapper(
        TEMPLATES, DeviceRegistry((registry_entries() if entries is None else entries).get), skew
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_gives_schema_exact_observations_keyed_by_patient(shape: str) -> None:
    events = mapper()(sample(shape), context(shape), MappingOptions())
    assert events
    for event in events:
        assert event.kind == "observation"
        assert schema_errors("observation", event.record) == []
        assert avro_roundtrip("observation", event.record) == event.record
        assert event.key == event.record["patient"]["key"] and event.key.endswith(f"@{HOSPITAL_OID}")
        assert event.record["effective_time"].tzinfo == UTC
        assert event.record["envelope"]["source"]["protocol"] == "device"
        assert event.record["interpretation"] == []


def test_blood_pressure_is_three_observations_with_loinc_and_ucum() -> None:
    events = mapper()(sample("bp-single"), context("bp-single"), MappingOptions())
    got = [(e.record["code"]["code"], e.record["value_quantity"]["unit"]) for e in events]
    assert got == [("8480-6", "mm[Hg]"), ("8462-4", "mm[Hg]"), ("8867-4", "/min")]
    assert events[0].record["device"] == {
        "id": "BPM-00A1B2C3",
        "id_system": "serial",
        "model": "TensioHome 3",
        "manufacturer": None,
        "hierarchy": None,
    }
    assert len({e.event_id for e in events}) == 3


def test_same_device_time_and_code_is_one_event_id_whatever_the_door_or_message() -> None:
    first = mapper()(sample("bp-single"), context("bp-single"), MappingOptions())
    other = replace(context("bp-single", connector="devices_mqtt"), message_id="m-2", facility="devices/x")
    again = mapper()(sample("bp-single"), other, MappingOptions())
    assert [e.event_id for e in first] == [e.event_id for e in again]
    doubled = json.dumps([json.loads(sample("bp-single"))] * 2).encode()
    assert len(mapper()(doubled, context("bp-single"), MappingOptions())) == 3


def test_a_reading_far_in_the_future_of_its_arrival_is_flagged_not_dropped() -> None:
    early = context("bp-single", received_at=datetime(2026, 11, 24, 7, 0, tzinfo=UTC))  # reading 07:15 UTC
    events = mapper()(sample("bp-single"), early, MappingOptions())
    assert {e.record["interpretation"][0]["system"] for e in events} == {FLAG_SYSTEM}
    assert {e.record["interpretation"][0]["code"] for e in events} == {"future-time"}
    relaxed = mapper(skew=timedelta(hours=1))(sample("bp-single"), early, MappingOptions())
    assert all(e.record["interpretation"] == [] for e in relaxed)


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ({}, "unknown_device"),
        (
            {
                "BPM-00A1B2C3": encode_links(
                    "BPM-00A1B2C3", [Link("1", HOSPITAL_OID, T0, T0 + timedelta(days=1))]
                )
            },
            "unlinked_device",
        ),
    ],
)
def test_unknown_or_unlinked_device_is_a_rejection_with_a_reason(
    entries: dict[str, bytes], code: str
) -> None:
    outcome = run_mapper(mapper(entries), sample("bp-single"), context("bp-single"), MappingOptions())
    assert isinstance(outcome, Rejection)
    assert (outcome.reason_code, outcome.location, outcome.rule) == (code, "$", "device registry")


def test_bad_payload_or_unknown_mapping_is_a_rejection() -> None:
    outcome = run_mapper(mapper(), b'{"deviceId": "BPM-00A1B2C3"}', context("bp-single"), MappingOptions())
    assert isinstance(outcome, Rejection) and outcome.reason_code == "missing_timestamp"
    assert outcome.rule == "template bp-single"
    outcome = run_mapper(mapper(), sample("bp-single"), context("nope"), MappingOptions())
    assert isinstance(outcome, Rejection) and outcome.reason_code == "unknown_mapping"


def test_a_device_that_changed_hands_gives_each_reading_to_its_holder_at_reading_time() -> None:
    handover = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    links = add_link([], Link("00900001", HOSPITAL_OID, T0))
    links = add_link(links, Link("00900002", HOSPITAL_OID, handover))
    assert links[0].valid_to == handover and links[1].valid_to is None
    registry = DeviceRegistry({"D": encode_links("D", links)}.get)
    assert registry.resolve("D", handover - timedelta(seconds=1)).patient["ipp"]["id"] == "00900001"  # type: ignore[index]
    assert registry.resolve("D", handover).patient["ipp"]["id"] == "00900002"  # type: ignore[index]
    assert registry.resolve("D", T0 - timedelta(days=1)).reason_code == "unlinked_device"
    ended = end_link(links, handover + timedelta(days=3))
    assert (
        DeviceRegistry({"D": encode_links("D", ended)}.get)
        .resolve("D", handover + timedelta(days=4))
        .reason_code
        == "unlinked_device"
    )
    assert decode_links(encode_links("D", ended)) == ended


def test_registry_refuses_contradictions_and_bad_ins() -> None:
    links = add_link([], Link("1", HOSPITAL_OID, T0, T0 + timedelta(days=10)))
    with pytest.raises(ConfigError, match="overlaps"):
        add_link(links, Link("2", HOSPITAL_OID, T0 + timedelta(days=5), T0 + timedelta(days=6)))
    with pytest.raises(ConfigError, match="end after"):
        add_link([], Link("1", HOSPITAL_OID, T0, T0))
    with pytest.raises(ConfigError, match="no open link"):
        end_link(links, T0 + timedelta(days=20))
    with pytest.raises(ConfigError):
        add_link([], Link("1", HOSPITAL_OID, T0, ins="123456789012345", ins_oid=INS_TEST_OID))


def test_a_linked_qualified_ins_reaches_the_patient_ref() -> None:
    body = "2800675123456"
    nir = f"{body}{ins_key(body):02d}"
    link = Link("00900009", HOSPITAL_OID, T0, ins=nir, ins_oid=INS_TEST_OID, ins_qualified=True)
    ref = add_link([], link)[0].patient_ref()
    assert ref["ins"] == {"matricule": nir, "oid": INS_TEST_OID, "kind": "TEST"}
    assert ref["ins_qualified"] is True and ref["key"] == f"00900009@{HOSPITAL_OID}"
    assert Link("7", "CHU_EXEMPLE", T0).patient_ref()["ipp"]["authority_name"] == "CHU_EXEMPLE"


def test_bearer_tokens_are_matched_by_hash_only() -> None:
    from affluent.core.settings import DeviceToken
    from connectors.devices.intake import authenticate, bearer, may_post, token_hash

    tokens = [DeviceToken(sha256=token_hash("a-token"), sender="GW-1", mappings=["bp-single"])]
    assert (
        bearer("Bearer a-token") == "a-token"
        and bearer("Basic a-token") is None
        and bearer("Bearer ") is None
    )
    found = authenticate(tokens, "a-token")
    assert found is not None and found.sender == "GW-1"
    assert authenticate(tokens, "a-tokeN") is None and authenticate(tokens, None) is None
    assert may_post(found, "bp-single") and not may_post(found, "scale-nested")
    assert "a-token" not in repr(tokens)
