"""``make fuzz``: every fuzz target for ``FUZZ_MINUTES`` (default 10) in all, findings to tests/fuzz/found/.

Each target gets an equal share of the time and is run in rounds of fresh random examples until its
share is used. A round that fails has already been shrunk by hypothesis to a minimal input; that
input, the exception and its message go to ``tests/fuzz/found/<target>-<n>.txt`` (the folder is
ignored by git: a finding becomes a regression test, not a file). Exit status 1 when anything was
found. The last lines printed are the inputs tried per target and the findings, for an issue note.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import TARGETS, TRIED, Target

FOUND = Path(__file__).resolve().parent / "found"


def one_round(target: Target, examples: int, last: list[Any]) -> BaseException | None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        value = data.draw(target.strategy)
        last[:] = [value]
        target.check(value)

    try:
        run()
    except Exception as exc:  # a finding, whatever its type, is what we are here for
        return exc
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("FUZZ_MINUTES", "10")))
    parser.add_argument("--only", nargs="*", default=None, help="target names")
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if args.only is None or t.name in args.only]
    share = args.minutes * 60 / max(len(targets), 1)
    FOUND.mkdir(exist_ok=True)
    findings: dict[str, int] = {}
    for target in targets:
        deadline = time.monotonic() + share
        findings[target.name] = 0
        while time.monotonic() < deadline:
            last: list[Any] = []
            exc = one_round(target, 500, last)
            if exc is None:
                continue
            findings[target.name] += 1
            path = FOUND / f"{target.name}-{int(time.time())}-{findings[target.name]}.txt"
            text = "".join(traceback.format_exception(exc))
            path.write_text(f"target: {target.name}\ninput: {last[0]!r}\n\n{text}", "utf-8")
            print(f"{target.name}: found {type(exc).__name__}, written to {path}", file=sys.stderr)
        print(f"{target.name}: {TRIED[target.name]:,} inputs, {findings[target.name]} found", flush=True)
    print("total:", f"{sum(TRIED.values()):,} inputs,", sum(findings.values()), "found")
    return 1 if any(findings.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
