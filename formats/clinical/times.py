"""Clinical times to UTC, keeping the precision the source gave.

HL7 v2 TS/DTM values (``YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]``) and FHIR ``date``/``dateTime``/``instant``
values carry variable precision; a "2026-03" birth month is not "2026-03-01T00:00". The instant is the
start of the stated period, and the precision travels beside it so consumers never read precision that
was not there. Values without an offset are local time of the sending hospital (Europe/Paris unless
configured): the UTC offset depends on the date (CET/CEST). In the autumn hour that occurs twice, the
first occurrence (summer time) is taken; a time in the spring gap is read as the instant the wall clock
jumps to — both documented choices, since the source did not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")

# ASCII digits only: ``\d`` alone also matches full-width and other Unicode digits, which ``int`` reads.
_HL7_TS = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,6}))?(?P<tz>[+-]\d{4})?",
    re.ASCII,
)
_FHIR_DT = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<frac>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)
# Instants kept a year away from datetime's limits, so that reading one in any zone, or shifting it by a
# destination's date shift, cannot overflow downstream: years 1 and 9999 are no clinical time.
EARLIEST: Final = datetime(2, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class TimeFormatError(ValueError):
    """A time value that does not follow its format; the text names the format, never the value."""


@dataclass(frozen=True, slots=True)
class ClinicalTime:
    instant: datetime  # UTC, start of the period the source stated
    precision: str  # year | month | day | hour | minute | second | millisecond | microsecond

    def date_text(self, zone: tzinfo = PARIS) -> str:
        """The calendar date in `zone` at the stated precision (e.g. '1985-03' for a birth month)."""
        local = self.instant.astimezone(zone)
        if self.precision == "year":
            return f"{local.year:04d}"
        if self.precision == "month":
            return f"{local.year:04d}-{local.month:02d}"
        return local.date().isoformat()


def _precision(parts: dict[str, str | None]) -> str:
    frac = parts.get("frac")
    if frac:
        return "millisecond" if len(frac) <= 3 else "microsecond"
    for key, name in (("s", "second"), ("mi", "minute"), ("h", "hour"), ("d", "day"), ("mo", "month")):
        if parts.get(key):
            return name
    return "year"


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    aware = naive.replace(tzinfo=zone, fold=0)
    # A wall time in the spring-forward gap does not exist: round-tripping through UTC moves it forward.
    back = aware.astimezone(UTC).astimezone(zone)
    if back.replace(tzinfo=None) != naive:
        return back
    return aware


def _build(parts: dict[str, str | None], tz_text: str | None, zone: tzinfo) -> ClinicalTime:
    try:
        frac = parts.get("frac") or ""
        naive = datetime(
            int(parts["y"] or 0),
            int(parts.get("mo") or 1),
            int(parts.get("d") or 1),
            int(parts.get("h") or 0),
            int(parts.get("mi") or 0),
            int(parts.get("s") or 0),
            int((frac + "000000")[:6]),
        )
    except ValueError:
        raise TimeFormatError("date or time out of range") from None
    precision = _precision(parts)
    try:
        if tz_text in (None, ""):
            aware = _localize(naive, zone)
        elif tz_text == "Z":
            aware = naive.replace(tzinfo=UTC)
        else:
            sign = 1 if tz_text[0] == "+" else -1
            digits = tz_text[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:4])
            if hours > 14 or minutes > 59:
                raise TimeFormatError("UTC offset out of range")
            aware = naive.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
        instant = aware.astimezone(UTC)
    except OverflowError:
        raise TimeFormatError("date or time out of range") from None
    if not EARLIEST <= instant <= LATEST:
        raise TimeFormatError("date or time out of range")
    return ClinicalTime(instant, precision)


def parse_hl7_ts(value: str, zone: tzinfo = PARIS) -> ClinicalTime | None:
    """HL7 v2 TS/DTM → UTC instant + precision; None for an empty value, TimeFormatError if malformed."""
    value = value.strip()
    if not value or value == '""':
        return None
    match = _HL7_TS.fullmatch(value)
    if match is None:
        raise TimeFormatError("not an HL7 TS/DTM value (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    parts = match.groupdict()
    return _build(parts, parts.get("tz"), zone)


def parse_fhir_datetime(value: str, zone: tzinfo = PARIS) -> ClinicalTime | None:
    """FHIR date / dateTime / instant → UTC instant + precision (offset-less times read in `zone`)."""
    value = value.strip()
    if not value:
        return None
    match = _FHIR_DT.fullmatch(value)
    if match is None:
        raise TimeFormatError("not a FHIR date/dateTime/instant (YYYY[-MM[-DD[Thh:mm[:ss[.s]][Z|+hh:mm]]]])")
    parts = match.groupdict()
    if parts.get("h") and not parts.get("tz") and parts.get("s") is None:
        raise TimeFormatError("FHIR dateTime with a time needs seconds")
    return _build(parts, parts.get("tz"), zone)


def hl7_date_text(value: str) -> str | None:
    """A date-only HL7 value (birth date) as ISO text at its precision, with no time-zone arithmetic.

    Birth and death dates are calendar dates, not instants: converting them to UTC would move a
    midnight birth to the previous day.
    """
    value = value.strip()
    if not value or value == '""':
        return None
    match = _HL7_TS.fullmatch(value)
    if match is None:
        raise TimeFormatError("not an HL7 date (YYYY[MM[DD]])")
    y, mo, d = match.group("y"), match.group("mo"), match.group("d")
    try:
        datetime(int(y), int(mo or 1), int(d or 1))
    except ValueError:
        raise TimeFormatError("date out of range") from None
    return "-".join(p for p in (y, mo, d) if p)


# --- Fast paths: the shapes feeds send most, read without the regex ------------------------------------
# parse_hl7_ts costs a regex and two time-zone conversions per value (several microseconds, a large share
# of an HL7 message's mapping budget). The functions below read the common all-digit shapes by slicing
# and answer None for anything else, so that the general function decides, and raises, exactly as it
# always does: callers write ``fast_hl7_ts(v, zone) or parse_hl7_ts(v, zone)``. They add no rule of
# their own: the local-time offset comes from parse_hl7_ts itself, and property tests check that both
# agree wherever the fast path answers.

_PRECISION_BY_LENGTH: Final[dict[int, str]] = {8: "day", 10: "hour", 12: "minute", 14: "second"}
_DATE_LENGTHS: Final = frozenset({4, 6, 8, 10, 12, 14})


# Feeds cluster in time, so nearly every value falls in a local hour already met. The cache only saves
# work: the answer is a pure function of (zone, hour).
@lru_cache(maxsize=8192)
def _hour_offset(zone: tzinfo, hour: str) -> timedelta | None:
    """The offset local wall time has from UTC during one local hour, or None when it is not uniform.

    Computed with :func:`parse_hl7_ts` itself (start and end of the hour), so the spring gap and the
    autumn fold keep exactly its documented semantics; an hour in which the offset changes (a zone
    whose transitions fall inside an hour) is left to the general path.
    """
    first = parse_hl7_ts(hour + "0000", zone)
    last = parse_hl7_ts(hour + "5959", zone)
    if first is None or last is None:
        return None
    naive_first = datetime(int(hour[:4]), int(hour[4:6]), int(hour[6:8]), int(hour[8:10]), tzinfo=UTC)
    offset = naive_first - first.instant
    if naive_first + timedelta(minutes=59, seconds=59) - last.instant != offset:
        return None
    return offset


def fast_hl7_ts(value: str, zone: tzinfo) -> ClinicalTime | None:
    """parse_hl7_ts for ``YYYYMMDD[HH[MM[SS]]][+/-ZZZZ]``, or None to let parse_hl7_ts handle the rest.

    Slices digits and reuses one offset per local hour. Anything unusual (fractions, partial dates,
    bad digits, out-of-range values) returns None so that parse_hl7_ts decides, and raises, as always.
    """
    n = len(value)
    offset_text = ""
    if n > 13 and value[-5] in "+-":
        offset_text = value[-5:]
        value = value[:-5]
        n -= 5
    precision = _PRECISION_BY_LENGTH.get(n)
    if precision is None or not value.isdigit() or not value.isascii():
        return None
    try:
        naive = datetime(
            int(value[:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10] or 0),
            int(value[10:12] or 0),
            int(value[12:14] or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    if not 3 <= naive.year <= 9997:
        return None  # the general path decides, and refuses the years next to datetime's limits
    if offset_text:
        digits = offset_text[1:]
        if not digits.isdigit() or not digits.isascii():
            return None
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        return ClinicalTime(naive - offset if offset_text[0] == "+" else naive + offset, precision)
    hour_offset = _hour_offset(zone, (value + "00")[:10])
    if hour_offset is None:
        return None
    return ClinicalTime(naive - hour_offset, precision)


def fast_hl7_date_text(value: str) -> str | None:
    """hl7_date_text for plain digit values, or None to let hl7_date_text handle (or reject) the rest."""
    n = len(value)
    if n not in _DATE_LENGTHS or not value.isdigit() or not value.isascii():
        return None
    year, month, day = value[:4], value[4:6], value[6:8]
    try:
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if not month:
        return year
    return f"{year}-{month}" if not day else f"{year}-{month}-{day}"
