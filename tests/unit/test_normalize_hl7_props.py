"""Properties of the HL7 mapper under arbitrary and damaged input.

A feed carries whatever a hospital interface engine produces, including truncated, hand-edited and
mis-encoded messages. Whatever arrives, the normalize stage must answer with canonical events or one
dead letter and move on: run_mapper never raises, never reports an internal bug, and whatever events
come out fit their Avro schema exactly.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from formats.clinical.times import TimeFormatError, hl7_date_text, parse_hl7_ts
from streams.normalize.envelope import RawContext
from streams.normalize.hl7 import fast_hl7_date_text, fast_hl7_ts, map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import CanonicalEvent, Rejection, run_mapper
from tests.support.golden import hl7_cases, hl7_text, schema_errors

OPTIONS = MappingOptions()
CTX = RawContext(
    "raw-1", "hl7v2", "mllp", "CHU_EXEMPLE", "SIH_PASTEL", "MSG1", datetime(2024, 9, 30, tzinfo=UTC)
)
REASON_CODES = {
    "unparsable",
    "unsupported_event",
    "no_patient",
    "bad_ins_key",
    "bad_time",
    "no_visit",
    "no_code",
    "no_merged_patient",
    "nothing_to_map",
}
CANARY = "QXWCANARY"
GOLDEN = {case: hl7_text(case) for case in hl7_cases()}
# HL7_PROPS_EXAMPLES=5000 for a long bug hunt; the default keeps the suite fast.
PROPS = settings(
    max_examples=int(os.environ.get("HL7_PROPS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text that looks like HL7 content: delimiters, escapes, digits, accents, the HL7 null.
_pieces = st.sampled_from(
    [*'|^~\\&0123456789ABCDEFXZ.+-<>=:/ éÈçŒ"\r\n', "\\F\\", "\\X0D\\", "\\.br\\", '""', "ISO", "UCUM", "MDC"]
)
hl7ish = st.lists(_pieces, max_size=12).map("".join)


def check(text: str) -> list[CanonicalEvent] | Rejection:
    """The properties every input must have; returns the outcome for further checks."""
    outcome = run_mapper(map_hl7, text, CTX, OPTIONS)
    if isinstance(outcome, Rejection):
        assert outcome.rule != "bug", outcome  # an unexpected exception: a mapper bug
        assert outcome.reason_code in REASON_CODES, outcome
        assert CANARY not in outcome.reason and CANARY not in outcome.location
        return outcome
    assert isinstance(outcome, list) and outcome
    for event in outcome:
        assert schema_errors(event.kind, event.record) == [], event.kind
        assert event.key == event.record["patient"]["key"]
    return outcome


@PROPS
@given(st.text(max_size=300))
def test_any_text_gives_events_or_one_rejection(text: str) -> None:
    check(text)


@PROPS
@given(st.text(max_size=200).map(lambda t: "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\r" + t))
def test_any_body_after_a_valid_header(text: str) -> None:
    check(text)


def _segments(case: str) -> list[str]:
    return [s for s in GOLDEN[case].split("\r") if s]


@PROPS
@given(
    case=st.sampled_from(sorted(GOLDEN)),
    data=st.data(),
)
def test_replacing_a_field_never_breaks(case: str, data: st.DataObject) -> None:
    segments = _segments(case)
    index = data.draw(st.integers(1, len(segments) - 1), label="segment")
    fields = segments[index].split("|")
    position = data.draw(st.integers(1, max(1, len(fields) + 2)), label="field")
    fields.extend([""] * (position + 1 - len(fields)))
    fields[position] = data.draw(hl7ish | st.just(CANARY) | st.just(""), label="value")
    segments[index] = "|".join(fields)
    check("\r".join(segments) + "\r")


@PROPS
@given(case=st.sampled_from(sorted(GOLDEN)), data=st.data())
def test_removing_or_duplicating_segments_never_breaks(case: str, data: st.DataObject) -> None:
    segments = _segments(case)
    index = data.draw(st.integers(1, len(segments) - 1), label="segment")
    if data.draw(st.booleans(), label="remove"):
        del segments[index]
    else:
        segments.insert(index, segments[index])
    check("\r".join(segments) + "\r")


@PROPS
@given(case=st.sampled_from(sorted(GOLDEN)), cut=st.integers(0, 2000))
def test_truncated_messages_never_break(case: str, cut: int) -> None:
    check(GOLDEN[case][:cut])


@PROPS
@given(case=st.sampled_from(sorted(GOLDEN)), data=st.data())
def test_changing_one_component_never_breaks_and_is_deterministic(case: str, data: st.DataObject) -> None:
    segments = _segments(case)
    index = data.draw(st.integers(1, len(segments) - 1), label="segment")
    fields = segments[index].split("|")
    position = data.draw(st.integers(1, len(fields) - 1), label="field") if len(fields) > 1 else 0
    assume(position > 0)
    components = fields[position].split("^")
    at = data.draw(st.integers(0, len(components)), label="component")
    components[at:at] = [data.draw(hl7ish, label="value")]
    fields[position] = "^".join(components)
    segments[index] = "|".join(fields)
    text = "\r".join(segments) + "\r"
    first = check(text)
    again = run_mapper(map_hl7, text, CTX, OPTIONS)
    if isinstance(first, Rejection):
        assert again == first
    else:
        assert isinstance(again, list)
        assert [(e.kind, e.key, e.record) for e in again] == [(e.kind, e.key, e.record) for e in first]


@PROPS
@given(
    trigger=st.sampled_from(
        ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28"]
    ),
    data=st.data(),
)
def test_every_trigger_over_every_adt_body(trigger: str, data: st.DataObject) -> None:
    case = data.draw(st.sampled_from([c for c in sorted(GOLDEN) if c.startswith("adt_")]))
    text = GOLDEN[case]
    message_type = text.split("|")[8] if text.startswith("MSH|") else ""
    assume(message_type.startswith("ADT^"))
    outcome = check(text.replace(message_type, f"ADT^{trigger}", 1))
    if isinstance(outcome, list):
        assert outcome[0].kind == "patient"


# --- the fast time paths agree with the lead's parsers -----------------------------------------------------

ZONES = [ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe"), UTC]
instants = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31))
# Days with a DST change in Paris, where offsets are the subtle part.
dst_days = st.sampled_from(["20240331", "20241027", "20250330", "20251026", "19960331", "19961027"])


@settings(max_examples=500, deadline=None)
@given(
    when=instants,
    length=st.sampled_from([8, 10, 12, 14]),
    offset=st.none() | st.tuples(st.sampled_from("+-"), st.integers(0, 16), st.sampled_from([0, 30, 45, 60])),
    zone=st.sampled_from(ZONES),
)
def test_fast_time_path_agrees_with_parse_hl7_ts(
    when: datetime, length: int, offset: tuple[str, int, int] | None, zone: ZoneInfo
) -> None:
    text = when.strftime("%Y%m%d%H%M%S")[:length]
    if offset is not None:
        text += f"{offset[0]}{offset[1]:02d}{offset[2]:02d}"
    fast = fast_hl7_ts(text, zone)
    try:
        slow = parse_hl7_ts(text, zone)
    except TimeFormatError:
        assert fast is None
        return
    assert fast is None or fast == slow


@settings(max_examples=300, deadline=None)
@given(day=dst_days, minute=st.integers(0, 24 * 60 - 1), second=st.sampled_from([0, 1, 59]))
def test_fast_time_path_agrees_on_dst_days(day: str, minute: int, second: int) -> None:
    text = f"{day}{minute // 60:02d}{minute % 60:02d}{second:02d}"
    for zone in ZONES:
        fast = fast_hl7_ts(text, zone)
        assert fast is None or fast == parse_hl7_ts(text, zone)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-.", max_size=20) | st.text(max_size=16))
def test_fast_paths_never_accept_what_the_lead_parsers_refuse(text: str) -> None:
    for zone in ZONES[:2]:
        fast = fast_hl7_ts(text, zone)
        try:
            slow = parse_hl7_ts(text, zone)
        except TimeFormatError:
            assert fast is None
        else:
            assert fast is None or fast == slow
    fast_date = fast_hl7_date_text(text)
    try:
        slow_date = hl7_date_text(text)
    except TimeFormatError:
        assert fast_date is None
    else:
        assert fast_date is None or fast_date == slow_date


def test_fast_time_path_handles_the_common_shapes() -> None:
    """If the fast path silently fell back everywhere, the agreement tests above would prove nothing."""
    paris = ZoneInfo("Europe/Paris")
    assert fast_hl7_ts("20240718100000", paris) is not None
    assert fast_hl7_ts("20240315080000+0100", paris) is not None
    assert fast_hl7_date_text("19850312") == "1985-03-12"
    spring_gap = fast_hl7_ts("20260329023000", paris)
    assert spring_gap is not None and spring_gap.instant == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    autumn_fold = fast_hl7_ts("20261025023000", paris)
    assert autumn_fold is not None and autumn_fold.instant == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    winter_paris, winter_utc = fast_hl7_ts("20240101120000", paris), fast_hl7_ts("20240101120000", UTC)
    assert winter_paris is not None and winter_utc is not None
    assert winter_paris.instant - winter_utc.instant == timedelta(hours=-1)
