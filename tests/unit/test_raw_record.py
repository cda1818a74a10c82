"""The raw record rules every door shares (connectors/raw.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import fastavro

from connectors.mllp.intake import Accepted, IntakePolicy, assess
from connectors.raw import RawMessage, raw_id_of, stream_key
from schemas.registry import load_schema, parse_schema


def test_mllp_raw_id_follows_the_shared_rule() -> None:
    msg = b"MSH|^~\\&|LAB|CHU-X|HUB|HUB|20260101120000||ORU^R01|CTRL-1|P|2.5\rPID|1||123^^^CHU&1.2.3&ISO^PI\r"
    accepted = assess(msg, IntakePolicy())
    assert isinstance(accepted, Accepted)
    assert accepted.raw_id == raw_id_of("hl7v2", "CHU-X", "LAB", "CTRL-1", accepted.digest)
    basis = f"hl7v2|CHU-X|LAB|CTRL-1|{accepted.digest}".encode()
    assert accepted.raw_id == hashlib.sha256(basis).hexdigest()


def test_a_reused_control_id_gets_its_own_raw_id_and_a_restamped_resend_does_not() -> None:
    """Before: raw_id was (facility, application, MSH-10) only, so a different message under a reused
    MSH-10 got the first one's raw_id and event ids, and collapsed into it downstream."""
    head = "MSH|^~\\&|LAB|CHU-X|HUB|HUB|{ts}||ORU^R01|CTRL-1|P|2.5\r"
    first = assess(
        (head.format(ts="20260101120000") + "PID|1||1^^^CHU&1.2.3&ISO^PI\r").encode(), IntakePolicy()
    )
    restamped = assess(
        (head.format(ts="20260101120500") + "PID|1||1^^^CHU&1.2.3&ISO^PI\r").encode(), IntakePolicy()
    )
    other = assess(
        (head.format(ts="20260101120000") + "PID|1||2^^^CHU&1.2.3&ISO^PI\r").encode(), IntakePolicy()
    )
    assert isinstance(first, Accepted) and isinstance(restamped, Accepted) and isinstance(other, Accepted)
    assert first.duplicate_key == restamped.duplicate_key == other.duplicate_key
    assert first.raw_id == restamped.raw_id  # MSH-7 restamped on a resend: still the same message
    assert first.raw_id != other.raw_id


def test_a_message_without_sender_id_is_identified_by_its_bytes() -> None:
    a = RawMessage(
        "fhir", "fhir_rest", "CHU-X", "EDS", b'{"resourceType":"Patient"}', "application/fhir+json"
    )
    b = RawMessage(
        "fhir", "fhir_rest", "CHU-X", "EDS", b'{"resourceType":"Patient"}', "application/fhir+json"
    )
    c = RawMessage(
        "fhir", "fhir_rest", "CHU-X", "EDS", b'{"resourceType":"Patient","id":"1"}', "application/fhir+json"
    )
    assert a.raw_id == b.raw_id != c.raw_id
    assert a.key == stream_key("CHU-X", "EDS") == b"CHU-X|EDS"


def test_the_record_is_a_valid_raw_message() -> None:
    message = RawMessage(
        "device",
        "devices_http",
        "GW-1",
        "vendor",
        b"{}",
        "application/json",
        message_id="r-1",
        attributes={"mapping": "vendor-a"},
    )
    record = message.record(datetime(2026, 1, 1, tzinfo=UTC))
    schema = parse_schema(load_schema("raw_message"))
    assert fastavro.validation.validate(record, schema, raise_errors=True)
    assert record["message_id"] == "r-1" and record["raw_id"] == raw_id_of("device", "GW-1", "vendor", "r-1")
