"""``affluent replay``'s arguments refused before any Kafka call, and its progress and summary lines."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from affluent.core.errors import ConfigError
from affluent.core.settings import Settings
from affluent.replay import Tally, progress, replay

T = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stage": "anonymize", "start": T}, "--stage anonymize: normalize or pseudonymize"),
        ({"stage": "pseudonymize", "start": T, "sources": ["fhir"]}, "applies to --stage normalize only"),
        ({"stage": "normalize", "start": T, "end": T}, "--to must be later than --from"),
        ({"stage": "normalize", "start": T, "sources": ["hl7"]}, "--source hl7: one of hl7v2, fhir, device"),
    ],
)
def test_wrong_arguments_are_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        replay(Settings(), **kwargs)  # refused before Kafka is asked anything


def test_progress_shows_a_bar_the_rate_and_the_time_left() -> None:
    line = progress(50, 100, time.monotonic() - 10)
    assert line.startswith("[" + "#" * 15 + "." * 15 + "] 50/100 ")
    assert "5/s" in line and "ETA 10 s" in line


def test_the_summary_counts_what_was_written() -> None:
    tally = Tally(read=3, events=Counter({"patient": 3, "encounter": 2}), dead=Counter({"no_visit": 1}))
    lines = tally.lines(2.0)
    assert lines[0] == "replayed 3 raw records in 2.0 s (2/s)"
    assert [line.split() for line in lines[1:]] == [
        ["events", "encounter", "2"],
        ["events", "patient", "3"],
        ["dead", "no_visit", "1"],
    ]
    assert Tally().lines(1.0)[-1] == "  nothing written"
