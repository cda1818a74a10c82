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
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")

_HL7_TS = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,6}))?(?P<tz>[+-]\d{4})?"
)
_FHIR_DT = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<frac>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


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
    return ClinicalTime(aware.astimezone(UTC), precision)


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
