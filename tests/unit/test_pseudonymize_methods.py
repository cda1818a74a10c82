"""Each de-identification method on its own: dates, départements, age bands, date shifts, parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.pseudonymize.methods import (
    LeafType,
    MethodError,
    MethodSpec,
    age_band,
    as_datetime,
    build_op,
    check_applicable,
    departement,
    generalize_date,
    parse_method,
    shift_date_text,
    shift_timestamp,
)

PARIS = ZoneInfo("Europe/Paris")
UTC_ZONE = ZoneInfo("UTC")


# ------------------------------------------------------------------ generalize: year, year_month


@pytest.mark.parametrize(
    ("value", "to", "expected"),
    [
        (datetime(2026, 3, 14, 8, 30, tzinfo=UTC), "year_month", "2026-03"),
        (datetime(2026, 3, 14, 8, 30, tzinfo=UTC), "year", "2026"),
        # 1 March in Paris, stored as the UTC instant of local midnight: still March
        (datetime(2026, 2, 28, 23, 0, tzinfo=UTC), "year_month", "2026-03"),
        # 1 January in Paris: the year of the local calendar
        (datetime(2025, 12, 31, 23, 0, tzinfo=UTC), "year", "2026"),
        (1_773_477_000_000_000, "year_month", "2026-03"),  # raw microseconds
        ("1984-07-23", "year_month", "1984-07"),
        ("1984-07-23", "year", "1984"),
        ("1984-07", "year_month", "1984-07"),
        ("1984", "year_month", "1984"),  # a partial date keeps what it has
    ],
)
def test_generalize_date(value, to, expected):
    assert generalize_date(value, to, PARIS) == expected


def test_generalize_date_refuses_malformed_dates_without_echoing_them():
    with pytest.raises(MethodError, match="FHIR form") as info:
        generalize_date("23/07/1984", "year", PARIS)
    assert "1984" not in str(info.value)
    with pytest.raises(MethodError, match="timestamp"):
        as_datetime("2026-03-14")


# ------------------------------------------------------------------ generalize: departement


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("75001", "75"),
        ("25000", "25"),
        ("01000", "01"),
        ("39170", "39"),
        ("20000", "2A"),  # Ajaccio
        ("20090", "2A"),
        ("20137", "2A"),  # Porto-Vecchio
        ("20167", "2A"),
        ("20200", "2B"),  # Bastia
        ("20220", "2B"),  # L'Île-Rousse
        ("20250", "2B"),  # Corte
        ("20260", "2B"),  # Calvi
        ("20600", "2B"),  # Bastia / Furiani
        ("20620", "2B"),
        ("97110", "971"),  # Guadeloupe
        ("97133", "971"),  # Saint-Barthélemy uses Guadeloupe's codes
        ("97200", "972"),
        ("97300", "973"),
        ("97400", "974"),
        ("97600", "976"),
        ("98800", "988"),
        ("75 001", "75"),
        # INSEE commune codes (birth places)
        ("2A004", "2A"),
        ("2B033", "2B"),
        ("25056", "25"),
        ("99134", "99"),  # born abroad (Spain)
        # not French or not a code
        ("00100", None),
        ("7500", None),
        ("750011", None),
        ("ABCDE", None),
        ("", None),
        (None, None),
    ],
)
def test_departement(code, expected):
    assert departement(code) == expected


@pytest.mark.parametrize("country", ["FRA", "fr", "France", " FRA ", None])
def test_departement_of_a_french_address(country):
    assert departement("25000", country) == "25"


@pytest.mark.parametrize("country", ["CHE", "DE", "BEL", "ITA"])
def test_departement_of_a_foreign_address_is_null(country):
    assert departement("25000", country) is None


# ------------------------------------------------------------------ generalize: age_band

AT = datetime(2026, 3, 14, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("birth", "width", "expected"),
    [
        ("1984-07-23", 5, "40-44"),  # 41
        ("1984-07-23", 10, "40-49"),
        ("1984-03-14", 5, "40-44"),  # 42 on the day
        ("1981-03-15", 5, "40-44"),  # 44, birthday tomorrow
        ("1981-03-14", 5, "45-49"),  # 45 today
        ("1984", 5, "40-44"),  # year only: counted from 1 January
        ("1984-07", 5, "40-44"),
        ("2026-03-01", 5, "0-4"),
        ("1936-03-14", 5, "90+"),
        ("1937-03-15", 5, "85-89"),
        ("1930-01-01", 1, "90+"),
    ],
)
def test_age_band(birth, width, expected):
    assert age_band(birth, AT, width, 90, PARIS) == expected


def test_age_band_top_and_the_last_band_before_it():
    assert age_band("1960-01-01", AT, 20, 70, PARIS) == "60-69"  # capped below the top
    assert age_band("1950-01-01", AT, 20, 70, PARIS) == "70+"


def test_age_band_of_a_birth_after_the_event_or_without_a_time_is_null():
    assert age_band("2027-01-01", AT, 5, 90, PARIS) is None
    assert age_band("1984-07-23", None, 5, 90, PARIS) is None


# ------------------------------------------------------------------ date_shift


def test_shift_timestamp_keeps_local_midnight_across_daylight_saving():
    july_first_midnight_paris = datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    shifted = shift_timestamp(july_first_midnight_paris, 150, PARIS)
    local = shifted.astimezone(PARIS)
    assert (local.year, local.month, local.day, local.hour) == (2026, 11, 28, 0)
    back = shift_timestamp(shifted, -150, PARIS)
    assert back == july_first_midnight_paris


@given(
    st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    st.integers(-3650, 3650),
)
def test_shift_timestamp_moves_the_local_date_by_exactly_the_offset(when, days):
    shifted = shift_timestamp(when, days, PARIS)
    before, after = when.astimezone(PARIS), shifted.astimezone(PARIS)
    assert after.date() - before.date() == timedelta(days=days)
    assert shifted.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "days", "expected"),
    [
        ("1984-07-23", 10, "1984-08-02"),
        ("1984-07-23", -23, "1984-06-30"),
        ("1984-07", 40, "1984-08"),  # first of the month shifted, month kept
        ("1984", -1, "1983"),
    ],
)
def test_shift_date_text(text, days, expected):
    assert shift_date_text(text, days) == expected


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("hash", "unknown method 'hash'"),
        ({"method": "encrypt"}, "unknown method 'encrypt'"),
        ({"to": "year"}, "unknown method None"),
        (42, "a method is a name"),
        ({"method": "pseudonymize"}, "method pseudonymize needs parameter 'context'"),
        ({"method": "generalize"}, "method generalize needs parameter 'to'"),
        ({"method": "keep", "to": "year"}, "method keep has no parameter 'to'"),
        ({"method": "pseudonymize", "context": "nir"}, "unknown pseudonymization context 'nir'"),
        ({"method": "generalize", "to": "decade"}, "unknown generalization 'decade'"),
        ({"method": "generalize", "to": "age_band"}, "needs parameter 'width'"),
        ({"method": "generalize", "to": "age_band", "width": 0}, "width must be"),
        ({"method": "generalize", "to": "age_band", "width": 5, "top": 2}, "top must be"),
        ({"method": "generalize", "to": "year", "width": 5}, "belong to age_band"),
        (
            {"method": "generalize", "to": "age_band", "width": 5, "as": "Age Band"},
            "'as' must be a field name",
        ),
    ],
)
def test_parse_method_errors(raw, problem):
    with pytest.raises(MethodError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_method(raw)


def test_parse_method_shorthand_and_mapping():
    assert parse_method("keep") == MethodSpec("keep", {})
    spec = parse_method({"method": "generalize", "to": "age_band", "width": 5})
    assert spec.to == "age_band" and spec.params["width"] == 5


TIMESTAMP = LeafType("onset_time", "timestamp", True, False)
DATE_TEXT = LeafType("birth_date", "date_text", True, False)
TEXT = LeafType("postal_code", "string", True, False)
FLAG = LeafType("deceased", "boolean", True, False)
PATIENT = LeafType("patient", "record", False, False, "PatientRef")
ENCOUNTER = LeafType("encounter", "record", True, False, "EncounterRef")
EVENT_IDS = LeafType("result_event_ids", "string", False, True)


@pytest.mark.parametrize(
    ("raw", "leaf", "problem"),
    [
        ({"method": "generalize", "to": "year"}, FLAG, "applies to timestamps and date fields"),
        ({"method": "generalize", "to": "departement"}, TIMESTAMP, "postal or INSEE"),
        ({"method": "generalize", "to": "age_band", "width": 5}, TIMESTAMP, "birth date"),
        ("date_shift", TEXT, "timestamps and date fields"),
        ({"method": "pseudonymize", "context": "patient"}, TEXT, "PatientRef"),
        ({"method": "pseudonymize", "context": "encounter"}, PATIENT, "EncounterRef"),
        ({"method": "pseudonymize", "context": "record"}, FLAG, "text identifiers"),
        ({"method": "pseudonymize", "context": "record"}, EVENT_IDS, "only event ids use context event"),
        ({"method": "pseudonymize", "context": "event"}, TEXT, "only event ids use context event"),
        (
            {"method": "generalize", "to": "year"},
            LeafType("times", "timestamp", False, True),
            "single values",
        ),
    ],
)
def test_methods_are_checked_against_the_canonical_type(raw, leaf, problem):
    with pytest.raises(MethodError, match=problem):
        check_applicable(parse_method(raw), leaf)


@pytest.mark.parametrize(
    ("raw", "leaf"),
    [
        ({"method": "generalize", "to": "year_month"}, DATE_TEXT),
        ({"method": "generalize", "to": "year"}, TIMESTAMP),
        ({"method": "generalize", "to": "departement"}, TEXT),
        ({"method": "generalize", "to": "age_band", "width": 10}, DATE_TEXT),
        ("date_shift", TIMESTAMP),
        ({"method": "pseudonymize", "context": "patient"}, PATIENT),
        ({"method": "pseudonymize", "context": "encounter"}, ENCOUNTER),
        ({"method": "pseudonymize", "context": "event"}, EVENT_IDS),
        ("keep", FLAG),
    ],
)
def test_methods_that_fit_their_field(raw, leaf):
    check_applicable(parse_method(raw), leaf)


def test_a_departement_operation_reads_the_sibling_country():
    op = build_op(parse_method({"method": "generalize", "to": "departement"}), TEXT, PARIS)
    assert op({"postal_code": "20200", "country": "FRA"}, None) == "2B"  # type: ignore[arg-type]
    assert op({"postal_code": "20200", "country": "ITA"}, None) is None  # type: ignore[arg-type]
    assert op({"postal_code": None}, None) is None  # type: ignore[arg-type]
