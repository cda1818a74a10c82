"""Times, identity (INS), units and event ids: the rules every mapper relies on."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from formats.clinical.identity import IdentityError, LocalId, ins_from, ins_key, patient_ref, valid_matricule
from formats.clinical.times import TimeFormatError, hl7_date_text, parse_fhir_datetime, parse_hl7_ts
from formats.clinical.units import quantity, to_ucum
from streams.normalize.envelope import RawContext, envelope, event_id
from streams.normalize.result import MappingError, Rejection, run_mapper


def with_key(nir13: str) -> str:
    return f"{nir13}{ins_key(nir13):02d}"


@pytest.mark.parametrize(
    ("value", "iso", "precision"),
    [
        ("2026", "2025-12-31T23:00:00+00:00", "year"),
        ("202603", "2026-02-28T23:00:00+00:00", "month"),
        ("20260315", "2026-03-14T23:00:00+00:00", "day"),
        ("2026031508", "2026-03-15T07:00:00+00:00", "hour"),
        ("202603150830", "2026-03-15T07:30:00+00:00", "minute"),
        ("20260315083012", "2026-03-15T07:30:12+00:00", "second"),
        ("20260315083012.123", "2026-03-15T07:30:12.123000+00:00", "millisecond"),
        ("20260315083012+0100", "2026-03-15T07:30:12+00:00", "second"),
        ("20260715083012-0500", "2026-07-15T13:30:12+00:00", "second"),
        ("20260715120000", "2026-07-15T10:00:00+00:00", "second"),  # summer: CEST, UTC+2
        ("20260329023000", "2026-03-29T01:30:00+00:00", "second"),  # spring gap: read as 03:30 CEST
        ("20261025023000", "2026-10-25T00:30:00+00:00", "second"),  # autumn fold: first (summer) occurrence
    ],
)
def test_hl7_times_to_utc_with_precision(value, iso, precision):
    t = parse_hl7_ts(value)
    assert t is not None
    assert (t.instant.isoformat(), t.precision) == (iso, precision)


@pytest.mark.parametrize(
    ("value", "iso", "precision"),
    [
        ("2026-03", "2026-02-28T23:00:00+00:00", "month"),
        ("2026-03-15T08:30:12Z", "2026-03-15T08:30:12+00:00", "second"),
        ("2026-03-15T08:30:12.5+02:00", "2026-03-15T06:30:12.500000+00:00", "millisecond"),
        ("2026-07-15T12:00:00", "2026-07-15T10:00:00+00:00", "second"),
    ],
)
def test_fhir_times(value, iso, precision):
    t = parse_fhir_datetime(value)
    assert t is not None
    assert (t.instant.isoformat(), t.precision) == (iso, precision)


@pytest.mark.parametrize("bad", ["2026-13", "20261340", "abc", "2026031508301", "20260315+2500"])
def test_bad_times_are_rejected_without_echoing_the_value(bad):
    with pytest.raises(TimeFormatError) as info:
        parse_hl7_ts(bad) if "-" not in bad[4:5] else parse_fhir_datetime(bad)
    assert bad not in str(info.value)


def test_empty_times_are_absent_and_birth_dates_stay_calendar_dates():
    assert parse_hl7_ts("") is None and parse_hl7_ts('""') is None
    assert hl7_date_text("19850312") == "1985-03-12"
    assert hl7_date_text("198503") == "1985-03"
    assert hl7_date_text("19850312000000") == "1985-03-12"


def test_ins_key_and_corsica():
    assert valid_matricule(with_key("2850375123456"))
    assert not valid_matricule("285037512345600")
    assert not valid_matricule("2850375123456")  # 13 characters: the key is missing
    corsican = "185072A123456"
    assert ins_key(corsican) == 97 - int("1850719123456") % 97
    assert valid_matricule(with_key(corsican))
    assert valid_matricule(with_key("185072B123456"))


def test_ins_is_recognised_by_oid_only():
    m = with_key("2850375123456")
    assert ins_from(m, "urn:oid:1.2.250.1.213.1.4.8") == {
        "matricule": m,
        "oid": "1.2.250.1.213.1.4.8",
        "kind": "NIR",
    }
    assert ins_from(m, "1.2.250.1.213.1.4.10")["kind"] == "TEST"
    assert ins_from(m, "1.2.250.1.213.1.4.9")["kind"] == "NIA"
    assert ins_from(m, "1.2.250.1.213.1.4.11")["kind"] == "DEMO"
    assert ins_from(m, "1.2.250.1.71.4.2.7") is None  # a hospital OID: not an INS, whatever CX-5 says
    with pytest.raises(IdentityError) as info:
        ins_from("285037512345600", "1.2.250.1.213.1.4.8")
    assert info.value.code == "bad_ins_key" and "2850375" not in str(info.value)


def test_patient_ref_keys_on_the_ipp_and_qualifies_only_qual():
    m = with_key("2850375123456")
    ids = [
        LocalId(m, "ASIP-SANTE-INS-NIR", "1.2.250.1.213.1.4.8", "NH"),
        LocalId("INSC-OLD", "INS-C", "1.2.250.1.213.1.4.2", "INS-C"),
        LocalId("0012345678", "CHU", "1.2.250.1.71.4.2.7", "PI"),
    ]
    ref = patient_ref(ids, ["QUAL"])
    assert ref["key"] == "0012345678@1.2.250.1.71.4.2.7"
    assert ref["ins"]["matricule"] == m and ref["ins_qualified"] is True
    assert patient_ref(ids, ["VALI"])["ins_qualified"] is False
    assert patient_ref(ids[1:], ["QUAL"])["ins"] is None  # INS-C is never an INS
    with pytest.raises(IdentityError):
        patient_ref(ids[:2], [])


def test_units_to_ucum_and_conversions():
    assert to_ucum("g/l") == "g/L" and to_ucum("µmol/L") == "umol/L" and to_ucum("mmHg") == "mm[Hg]"
    q = quantity(154.0, "lb")
    assert (q.unit, round(q.value, 3), q.original_unit) == ("kg", 69.853, "lb")
    assert quantity(98.6, "°F").unit == "Cel" and round(quantity(98.6, "°F").value, 2) == 37.0
    assert quantity(154.0, "lb", conversions={}).unit == "[lb_av]"
    odd = quantity(3.0, "bidules")
    assert (odd.unit, odd.unit_system, odd.original_unit) == ("bidules", None, "bidules")


CTX = RawContext("r1", "hl7v2", "mllp", "CHU", "PAS", "MSG1", datetime(2026, 1, 1, tzinfo=UTC))


def test_event_ids_are_deterministic_and_distinct():
    assert event_id(CTX, 0) == event_id(CTX, 0)
    assert event_id(CTX, 0) != event_id(CTX, 1)
    env = envelope(CTX, "patient", "patient.admitted", parse_hl7_ts("20260101"))
    assert env["event_id"] == event_id(CTX, "patient") and env["event_time_precision"] == "day"


@given(st.text(max_size=30))
def test_hl7_ts_never_raises_anything_but_time_format_error(text):
    with contextlib.suppress(TimeFormatError):
        parse_hl7_ts(text)


def test_run_mapper_turns_failures_into_rejections():
    def broken(*_):
        raise ZeroDivisionError("secret value DUPONT")

    def refusing(*_):
        raise MappingError("no_patient", "no PID segment", "PID")

    rej = run_mapper(broken)
    assert isinstance(rej, Rejection) and "DUPONT" not in rej.reason
    assert run_mapper(refusing) == Rejection("no_patient", "no PID segment", "PID")
    assert run_mapper(lambda: []) == Rejection("nothing_to_map", "the message holds no event this hub maps")
