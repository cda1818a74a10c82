"""``affluent dlq``'s pure parts: counting, rendering, payloads shown as an operator reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.errors import ConfigError
from affluent.dlq import parse_time, payload_text, render_record, render_rows, summarize
from formats.reasons import ReasonCode
from schemas.deadletter import dead_letter_record

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def letter(reason: ReasonCode, facility: str, minutes: int, **extra: object) -> dict:
    return dead_letter_record(
        stage="normalize",
        reason_code=reason,
        reason=reason.text,
        source_facility=facility,
        failed_at=T0 + timedelta(minutes=minutes),
        **extra,  # type: ignore[arg-type]
    )


def test_counts_by_topic_stage_reason_and_facility_most_frequent_first() -> None:
    records = [
        ("dlq.normalize", letter(ReasonCode.NO_PATIENT, "CHU-A", 5)),
        ("dlq.normalize", letter(ReasonCode.BAD_TIME, "CHU-A", 1)),
        ("dlq.normalize", letter(ReasonCode.BAD_TIME, "CHU-A", 9)),
        ("dlq.normalize", letter(ReasonCode.BAD_TIME, "CHU-B", 3)),
    ]
    rows = summarize(records)
    assert [(r.reason_code, r.facility, r.count) for r in rows] == [
        ("bad_time", "CHU-A", 2),
        ("bad_time", "CHU-B", 1),
        ("no_patient", "CHU-A", 1),
    ]
    assert (rows[0].first, rows[0].last) == (T0 + timedelta(minutes=1), T0 + timedelta(minutes=9))
    lines = render_rows(rows)
    assert lines[-1] == "4 dead letters" and "bad_time" in lines[1]
    assert render_rows([]) == ["no dead letters in that range"]


def test_an_hl7_payload_is_shown_one_segment_per_line_in_its_charset() -> None:
    payload = "MSH|^~\\&|A|CHU|B|C|2026||ADT^A01|1|P|2.5|||||FRA|8859/1\rPID|1||1^^^CHU^PI||DUPRÉ\r"
    text = payload_text(payload.encode("latin-1"), "x-application/hl7-v2+er7")
    assert text.splitlines()[1] == "PID|1||1^^^CHU^PI||DUPRÉ"


def test_json_is_indented_and_nothing_is_fatal() -> None:
    assert payload_text(b'{"a":1}', "application/fhir+json") == '{\n  "a": 1\n}'
    assert payload_text(b"\xff not json", "application/json") == "\ufffd not json"
    assert payload_text(None, None).startswith("(no payload")


def test_a_record_shows_reason_location_source_and_lineage() -> None:
    record = letter(
        ReasonCode.NO_VISIT,
        "CHU-A",
        0,
        location="PV1-19",
        raw_id="ab" * 32,
        lineage={"topic": "ingest.hl7v2.raw", "partition": 2, "offset": 44},
        attributes={"outcome": "partial"},
        payload=b"MSH|^~\\&|A|CHU-A\rPV1|1\r",
        content_type="x-application/hl7-v2+er7",
    )
    lines = render_record("dlq.normalize", record)
    joined = "\n".join(lines)
    assert "no_visit: a movement without a visit number" in joined
    assert "PV1-19" in joined and "ingest.hl7v2.raw[2]@44" in joined and "attribute outcome" in joined
    assert lines[-1].splitlines() == ["MSH|^~\\&|A|CHU-A", "PV1|1"]


def test_times_are_iso_and_utc_by_default() -> None:
    assert parse_time("2026-12-01T08:00", "--since") == T0
    assert parse_time("2026-12-01T09:00+01:00", "--since") == T0
    with pytest.raises(ConfigError, match="--since 'yesterday' is not an ISO 8601 time"):
        parse_time("yesterday", "--since")
