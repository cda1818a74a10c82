"""The blocks `make soak` and `make chaos` own in BENCHMARKS.md survive each other and `make bench`."""

from __future__ import annotations

import pytest

from bench.sections import carried_over, replace_section, write_section

REPORT = "# Benchmarks\n\nfigures of the bench run\n"


def test_a_new_section_is_appended_and_a_second_write_replaces_only_it():
    once = replace_section(REPORT, "soak", "## Memory soak\nflat")
    assert once.startswith(REPORT.rstrip())
    assert "<!-- begin soak -->\n## Memory soak\nflat\n<!-- end soak -->" in once
    both = replace_section(once, "chaos", "## Fault suite\n480/480")
    again = replace_section(both, "soak", "## Memory soak\nNOT flat")
    assert "flat\n<!-- end soak -->" not in again.replace("NOT flat", "")
    assert "NOT flat" in again and "480/480" in again
    assert again.index("begin soak") < again.index("begin chaos")  # places are kept


def test_the_bench_carries_every_block_over_and_nothing_else():
    document = replace_section(replace_section(REPORT, "soak", "S"), "chaos", "C")
    kept = carried_over(document)
    assert kept == "<!-- begin soak -->\nS\n<!-- end soak -->\n\n<!-- begin chaos -->\nC\n<!-- end chaos -->"
    assert "figures of the bench run" not in kept
    assert carried_over(REPORT) == ""


def test_an_unterminated_block_is_not_carried_over_and_a_rewrite_appends_a_whole_one():
    broken = REPORT + "<!-- begin soak -->\nhalf written"
    assert carried_over(broken) == ""
    fixed = replace_section(broken, "soak", "whole")
    assert carried_over(fixed) == "<!-- begin soak -->\nwhole\n<!-- end soak -->"


def test_section_names_are_checked():
    with pytest.raises(ValueError):
        replace_section(REPORT, "Soak -->", "x")


def test_write_section_creates_or_updates_the_file(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section("chaos", "first", path)
    path.write_text(REPORT + "\n" + path.read_text())
    write_section("chaos", "second", path)
    text = path.read_text()
    assert text.count("<!-- begin chaos -->") == 1 and "second" in text and "first" not in text
    assert text.startswith("# Benchmarks")
