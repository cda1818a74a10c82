"""Sections of BENCHMARKS.md written by commands other than ``make bench`` (``make soak``, ``make chaos``).

Each of those runs for minutes and measures something the bench suites do not (memory over time,
what survives crashes), so each owns one marked block of the report and rewrites only that block;
``make bench`` rewrites everything else and carries the blocks over unchanged. A block keeps the date
of its own run, so a reader never takes figures of different runs for one.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["DEFAULT_REPORT", "carried_over", "replace_section", "write_section"]

DEFAULT_REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _begin(name: str) -> str:
    return f"<!-- begin {name} -->"


def _end(name: str) -> str:
    return f"<!-- end {name} -->"


def _blocks(document: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of every well-formed block, end exclusive of the end marker's newline."""
    found = []
    begins = list(re.finditer(r"<!-- begin ([a-z][a-z0-9_-]*) -->", document))
    for i, match in enumerate(begins):
        name = match.group(1)
        end = document.find(_end(name), match.end())
        following = begins[i + 1].start() if i + 1 < len(begins) else len(document)
        if 0 <= end < following:  # a block cut short (an interrupted write) ends nowhere
            found.append((name, match.start(), end + len(_end(name))))
    return found


def replace_section(document: str, name: str, text: str) -> str:
    """The document with block ``name`` holding ``text`` (appended at the end if it had no such block)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"section names are lower-case words, not {name!r}")
    block = f"{_begin(name)}\n{text.strip()}\n{_end(name)}"
    for found, start, end in _blocks(document):
        if found == name:
            return document[:start] + block + document[end:]
    return f"{document.rstrip()}\n\n{block}\n" if document.strip() else f"{block}\n"


def carried_over(document: str) -> str:
    """Every block of an existing report, in its order, for ``make bench`` to append to its new one."""
    return "\n\n".join(document[start:end] for _name, start, end in _blocks(document))


def write_section(name: str, text: str, path: Path = DEFAULT_REPORT) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(replace_section(existing, name, text), encoding="utf-8")
