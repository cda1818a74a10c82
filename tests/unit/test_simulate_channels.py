"""Pure parts of the simulator's FHIR and device channels: what they send, and the raw ids they expect.

The raw id a channel expects must be the one its door stores: checked here against the doors' own
code paths (the FHIR door's message building, the device door's raw record) rather than against the
simulator's helpers."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from affluent.sim.accounting import Tally
from affluent.sim.devices import HTTP, MQTT, DeviceTarget, device_links, gateway_topic
from affluent.sim.fhir import FhirMessage, FhirTarget, fhir_message, fhir_raw_id
from affluent.sim.simulate import Accounts, Plan, channel_lines, report_lines, run_tag, traffic
from affluent.sim.synthetic import HOSPITAL_OID, INS_TEST_OID, cohort
from connectors.devices.intake import raw_message
from connectors.fhir_rest import intake
from connectors.raw import RawMessage
from formats.clinical.identity import ins_key
from formats.devices.registry import DeviceRegistry, encode_links
from formats.devices.templates import PayloadError, load_templates, read_payload

START = datetime(2026, 11, 24, 9)
TEMPLATES = load_templates(None)


def _plan(**changes: object) -> Plan:
    base = Plan(
        patients=40,
        rate=100,
        duration_s=15,
        malformed_share=0.05,
        fhir=FhirTarget("http://127.0.0.1:1/fhir", "t"),
        devices=DeviceTarget("http://127.0.0.1:2", "t", mqtt_port=1883),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def messages():
    plan = _plan()
    return traffic(plan, cohort(11, plan.patients), 11, START, TEMPLATES)


def test_traffic_is_reproducible_and_shares_the_rate_between_channels(messages):
    plan = _plan()
    again = traffic(plan, cohort(11, plan.patients), 11, START, TEMPLATES)
    assert [m.payload for m in messages] == [m.payload for m in again]
    channels = Counter(m.channel for m in messages)
    assert set(channels) == {"mllp", "fhir", HTTP, MQTT}
    assert sum(channels.values()) == 1500
    assert 0.3 < channels["mllp"] / 1500 < 0.5 and 0.2 < channels["fhir"] / 1500 < 0.4


def test_only_mllp_keeps_the_hl7_traffic_of_before():
    plan = Plan(patients=30, rate=100, duration_s=5)
    assert {m.channel for m in traffic(plan, cohort(5, 30), 5, START)} == {"mllp"}


def test_every_channel_has_a_small_share_of_malformed_messages(messages):
    for channel in ("mllp", "fhir", HTTP, MQTT):
        mine = [m for m in messages if m.channel == channel]
        broken = [m for m in mine if m.label.startswith("malformed:")]
        assert 0.01 < len(broken) / len(mine) < 0.12, channel


def test_fhir_malformed_requests_are_refused_by_the_door_and_the_rest_is_stored(messages):
    fhir = [m for m in messages if m.channel == "fhir"]
    assert {m.label for m in fhir} >= {
        "Observation",
        "Condition",
        "Encounter",
        "Patient",
        "Bundle/transaction",
    }
    for m in fhir:
        message = FhirMessage(m.target, m.payload, m.label)
        if m.label.startswith("malformed:"):
            assert m.raw_id is None
            with pytest.raises(intake.Refusal) as refused:
                if m.target:
                    intake.resource_item(m.payload, m.target)
                else:
                    intake.bundle_plan(m.payload)
            assert 400 <= refused.value.status < 500 and refused.value.issues
        else:
            assert m.raw_id is not None and fhir_raw_id(message, "CHU-SYNTH|EDS-SYNTH") == m.raw_id


def test_fhir_raw_id_is_the_one_the_door_stores():
    """The door builds a RawMessage from the planned item and the token's sender; same id."""
    p = cohort(3, 1)[0]
    for seed in range(30):
        m = fhir_message(random.Random(seed), p, f"r{seed}", datetime(2026, 11, 24, 9, tzinfo=UTC))
        item = intake.resource_item(m.body, m.path) if m.path else intake.bundle_plan(m.body).items[0]
        door = RawMessage(
            "fhir",
            "fhir_rest",
            "CHU",
            "EDS",
            item.payload,
            "application/fhir+json",
            message_id=item.message_id,
        )
        assert fhir_raw_id(m, "CHU|EDS") == door.raw_id


def test_fhir_resources_name_the_patient_by_ipp_and_carry_a_valid_nir(messages):
    for m in (m for m in messages if m.label == "Patient"):
        resource = json.loads(m.payload)
        ids = {i["system"]: i["value"] for i in resource["identifier"]}
        nir = ids[f"urn:oid:{INS_TEST_OID}"]
        assert len(nir) == 15 and int(nir[13:]) == ins_key(nir[:13])
        assert ids[f"urn:oid:{HOSPITAL_OID}"]
    names = "".join(json.loads(m.payload)["name"][0]["family"] for m in messages if m.label == "Patient")
    assert any(c in names for c in "ÈÇËÜŒÉÏÔ")


def test_device_raw_ids_are_the_doors_and_http_malformed_payloads_are_refused(messages):
    target = DeviceTarget("http://127.0.0.1:2", "t", mqtt_port=1883)
    for m in (m for m in messages if m.channel in (HTTP, MQTT)):
        template = TEMPLATES[m.target if m.channel == HTTP else "gateway-batch"]
        sender = target.sender if m.channel == HTTP else m.target
        try:
            readings = read_payload(template, m.payload)
        except PayloadError:
            assert m.label.startswith("malformed:")
            # Over HTTP the door answers 400 (never stored); over MQTT it dead-letters under the raw id.
            if m.channel == HTTP:
                assert m.raw_id is None
            else:
                assert m.raw_id == RawMessage("device", "", sender, template.name, m.payload, "").raw_id
            continue
        assert not m.label.startswith("malformed:")
        assert m.raw_id == raw_message(m.channel, sender, template, m.payload, len(readings)).raw_id


def test_every_device_is_linked_to_its_patient_at_reading_time(messages):
    people = cohort(11, 40)
    since = datetime(2026, 11, 23, tzinfo=UTC)
    run = run_tag(11)
    links = device_links(run, people, since)
    registry = DeviceRegistry(
        lambda device: encode_links(device, [links[device]]) if device in links else None
    )
    for m in (m for m in messages if m.channel in (HTTP, MQTT) and not m.label.startswith("malformed")):
        body = json.loads(m.payload)
        readings = body["measurements"] if m.channel == MQTT else [body]
        for r in readings:
            device = r.get("sensor") or r.get("deviceId")
            when = datetime.fromisoformat((r.get("t") or r.get("measuredAt")).replace("Z", "+00:00"))
            assert registry.resolve(device, when).patient is not None
    assert gateway_topic("sim", run, 3).startswith("sim/") and gateway_topic("sim", run, 3).endswith(
        "/gateway-batch"
    )


def test_channel_lines_show_each_channel_and_what_is_missing():
    accounts = Accounts(
        Tally(sent=5, acknowledged=4),
        {
            "mllp": Tally(sent=3, acknowledged=3),
            "fhir": Tally(
                sent=2, acknowledged=1, refused=Counter({"HTTP 400 OperationOutcome": 1}), missing_national=2
            ),
        },
    )
    lines = channel_lines(accounts.channels)
    fhir = next(line for line in lines if line.strip().startswith("fhir"))
    assert fhir.split() == ["fhir", "2", "1", "1", "0", "0", "0", "0", "2"]
    assert report_lines(accounts)[0] == "Accounting"
