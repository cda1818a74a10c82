"""The pure parts of ``affluent trace``: what an operator may type, which raw record is the message, and
how a found tree is shown (ids, times, reasons and pseudonyms only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.errors import ConfigError
from affluent.trace import (
    DeadLetter,
    Event,
    Hop,
    National,
    Raw,
    Target,
    Trace,
    hl7_control_id,
    key_may_match,
    parse_target,
    raw_matches,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_targets_an_operator_may_type() -> None:
    assert parse_target(" ABCDEF0123 ") == Target(hex_id="abcdef0123")
    assert parse_target("CHU-A/MSG-42") == Target(facility="CHU-A", message_id="MSG-42", protocol="hl7v2")
    assert parse_target("CHU-A/MSG/42") == Target(facility="CHU-A", message_id="MSG/42", protocol="hl7v2")
    assert parse_target("Observation/lab-1", sender="eds-1") == Target(
        facility="eds-1", message_id="Observation/lab-1", protocol="fhir"
    )
    assert parse_target("Observation/lab-1/_history/3", sender="eds-1").message_id == (
        "Observation/lab-1/_history/3"
    )


@pytest.mark.parametrize(
    ("text", "sender", "message"),
    [
        ("", None, "nothing to trace"),
        ("abc", None, "names no message"),
        ("/MSG", None, "names no message"),
        ("not a reference", "eds-1", "is not a FHIR reference"),
        ("observation/1", "eds-1", "is not a FHIR reference"),
    ],
)
def test_anything_else_is_one_line(text: str, sender: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_target(text, sender)
    assert "\n" not in str(caught.value)


def raw(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "raw_id": "ab" * 32,
        "source_facility": "CHU-A",
        "message_id": "MSG-42",
        "payload": b"",
    }
    return {**base, **fields}


def test_which_raw_record_is_the_message() -> None:
    assert raw_matches(Target(hex_id="abab"), raw())
    assert not raw_matches(Target(hex_id="abac"), raw())
    hl7 = Target(facility="CHU-A", message_id="MSG-42", protocol="hl7v2")
    assert raw_matches(hl7, raw())
    assert raw_matches(hl7, raw(message_id="MSG-42#0011aabb"))  # a reused control id, digest recorded
    assert not raw_matches(hl7, raw(source_facility="CHU-B"))  # the same id at another hospital
    assert not raw_matches(hl7, raw(message_id="MSG-421"))
    fhir = Target(facility="CHU-A", message_id="Observation/1", protocol="fhir")
    assert raw_matches(fhir, raw(message_id="Observation/1/_history/2"))
    assert not raw_matches(fhir, raw(message_id="Observation/10/_history/2"))
    version = Target(facility="CHU-A", message_id="Observation/1/_history/2", protocol="fhir")
    assert raw_matches(version, raw(message_id="Observation/1/_history/2"))
    assert not raw_matches(version, raw(message_id="Observation/1/_history/3"))


def test_facility_filter_before_decoding_and_control_id_of_a_refused_payload() -> None:
    hl7 = Target(facility="CHU-A", message_id="1", protocol="hl7v2")
    assert key_may_match(hl7, b"CHU-A|LAB") and not key_may_match(hl7, b"CHU-AB|LAB")
    assert key_may_match(Target(hex_id="abcdabcd"), b"anything")
    assert hl7_control_id(b"MSH|^~\\&|LAB|CHU-A|HUB|HUB|20261201||ADT^A01|C-7|P|2.5\rPID|1") == "C-7"
    assert hl7_control_id(b"MSH#^~\\&#LAB#CHU-A#HUB#HUB#20261201##ADT^A01#C-8#P#2.5") == "C-8"
    assert hl7_control_id(b"MSH|^~\\&|LAB") is None
    assert hl7_control_id(b'{"resourceType": "Patient"}') is None and hl7_control_id(None) is None


def found_tree() -> Trace:
    hop = Hop("ingest.hl7v2.raw", 0, 7, T0)
    event = Event(
        Hop("canonical.observation", 1, 9, T0 + timedelta(seconds=1.5)),
        "e" * 64,
        "observation.recorded",
        "observation",
    )
    event.national.append(
        National(
            Hop("national.hdh.observation.v1", 2, 11, T0 + timedelta(seconds=1.75)),
            "hdh",
            "k1:" + "p" * 52,
            "n" * 64,
        )
    )
    event.not_sent["inca"] = "its policy takes no observation"
    letter = DeadLetter(
        Hop("dlq.normalize", 0, 3, T0 + timedelta(seconds=2)),
        "normalize",
        "no_visit",
        "no visit number",
        "PV1-19",
        "",
        None,
    )
    message = Raw(hop, "r" * 64, "hl7v2", "mllp", "CHU-A", "LAB", "MSG-42", "ORU^R01", T0, [event], [letter])
    return Trace(Target(facility="CHU-A", message_id="MSG-42", protocol="hl7v2"), T0, None, [message])


def test_the_tree_shows_each_hop_with_its_delay() -> None:
    result = found_tree()
    assert result.arrived
    lines = result.lines()
    assert lines[0] == "trace of HL7 message MSG-42 from CHU-A (since 2026-12-01 08:00 UTC)"
    assert lines[1].startswith("raw ingest.hl7v2.raw[0]@7  2026-12-01 08:00:00.000 UTC  hl7v2 ORU^R01 MSG-42")
    assert lines[2] == f" ├ canonical.observation[1]@9  +1.500 s  observation.recorded  event {'e' * 16}…"
    assert lines[3] == (
        f" │   ├ hdh: national.hdh.observation.v1[2]@11  +0.250 s  key k1:{'p' * 12}…  national event {'n' * 16}…"
    )
    assert lines[4] == " │   └ inca: not sent, its policy takes no observation"
    assert lines[5] == " └ dead letter dlq.normalize[0]@3  +2.000 s  no_visit at PV1-19: no visit number"
    assert lines[-1] == "arrived: yes"


def test_the_json_has_the_same_tree() -> None:
    document = found_tree().to_json()
    [message] = document["raw"]
    [event] = message["events"]
    assert document["arrived"] is True and document["target"] == {
        "facility": "CHU-A",
        "message_id": "MSG-42",
        "protocol": "hl7v2",
    }
    assert (event["delay_s"], event["national"][0]["delay_s"]) == (1.5, 0.25)
    assert event["national"][0]["key"] == "k1:" + "p" * 52  # the whole pseudonym in JSON
    assert event["not_sent"] == {"inca": "its policy takes no observation"}
    assert message["dead_letters"][0]["reason_code"] == "no_visit"


def test_nothing_found_and_door_refusals() -> None:
    empty = Trace(Target(hex_id="abcdabcd"), T0, T0 + timedelta(hours=1))
    assert empty.lines() == [
        "trace of id abcdabcd (2026-12-01 08:00 .. 2026-12-01 09:00 UTC)",
        "  nothing found: check the id, or widen --since",
        "arrived: no national record found",
    ]
    letter = DeadLetter(Hop("dlq.ingest", 0, 1, T0), "ingest", "no_msh", "no MSH segment", "", "", None)
    refused = Trace(Target(facility="CHU-A", message_id="1", protocol="hl7v2"), T0, None, refused=[letter])
    assert " └ dead letter dlq.ingest[0]@1  no_msh: no MSH segment" in [
        line.replace("  └", " └") for line in refused.lines()
    ]
    assert not refused.arrived
