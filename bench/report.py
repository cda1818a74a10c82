"""What a suite hands back, and how it becomes markdown.

Suites return plain rows of already formatted strings rather than numbers: each suite knows which
precision is meaningful for its figures (a rate of 143,210 msgs/s is not "143210.3817"), and the
report writer then needs no knowledge of any suite. Targets are kept apart from tables so that the
report can gather them into one summary at the top, where a reader looks for "did we make it".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "SuiteResult",
    "Table",
    "Target",
    "fmt_count",
    "fmt_ms",
    "fmt_percent",
    "fmt_rate",
    "fmt_ratio",
    "fmt_us",
    "markdown_table",
    "percentile",
]


@dataclass(frozen=True, slots=True)
class Table:
    """One markdown table; ``align`` holds ``"l"`` or ``"r"`` per column (numbers read best right-aligned)."""

    headers: list[str]
    rows: list[list[str]]
    title: str = ""
    align: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A figure the project promised, beside what this run measured."""

    what: str
    wanted: str
    measured: str
    met: bool


@dataclass(slots=True)
class SuiteResult:
    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    how_measured: str = ""
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time the suite took, so that the 5-minute budget stays visible


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "| " + " | ".join(rule) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, the table {len(headers)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def fmt_rate(per_second: float) -> str:
    """Rates with three significant figures at most: the run-to-run noise is larger than that."""
    if not math.isfinite(per_second):
        return "n/a"
    if per_second >= 1000:
        return f"{round(per_second, -math.floor(math.log10(per_second)) + 2):,.0f}"
    if per_second >= 10:
        return f"{per_second:,.0f}"
    return f"{per_second:.2g}"


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    if us >= 100:
        return f"{us:,.0f} µs"
    return f"{us:.1f} µs" if us >= 10 else f"{us:.2f} µs"


def fmt_ms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    ms = seconds * 1000
    if ms >= 100:
        return f"{ms:,.0f} ms"
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.2f} ms"


def fmt_ratio(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "n/a"
    if ratio >= 10:
        return f"{ratio:,.0f}×"
    if ratio >= 0.01:
        return f"{ratio:.2f}×"
    return f"{ratio:.2g}×"  # two significant figures, not a misleading "0.00×"


def fmt_percent(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a p99 that is an actually observed latency, never an interpolation."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
