"""``python -m bench`` (``make bench``): run the suites and write BENCHMARKS.md.

The report is rewritten whole from one run, never merged with older figures: numbers from
different runs (or machines, or loads) are not comparable, and a ratio is only meaningful when
both of its terms were measured side by side. The only exception is the marked blocks that
``make soak`` and ``make chaos`` write (:mod:`bench.sections`): they are carried over as they are,
each dated by its own run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import SUITE_MODULES, Options, load_suites
from bench.report import SuiteResult, markdown_table
from bench.sections import DEFAULT_REPORT, carried_over

DEFAULT_OUTPUT = DEFAULT_REPORT


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_rows(load_before: str, load_after: str) -> list[list[str]]:
    """What the figures depend on. The load average is there because this machine is shared."""
    from affluent.core.settings import load_settings

    stack = load_settings().stack
    rows = [
        ["cores", str(os.cpu_count())],
        ["CPU", _cpu_model()],
        ["RAM", _ram()],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["Python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["Kafka", f"{stack.kafka_version}, one KRaft broker on this machine"],
        ["schema registry", f"Apicurio {stack.registry_version} (Confluent API), on this machine"],
    ]
    try:
        import confluent_kafka

        # version() is a tuple in some releases, a plain string in others.
        client, library = confluent_kafka.version(), confluent_kafka.libversion()
        rows.append(
            [
                "confluent-kafka / librdkafka",
                f"{client[0] if isinstance(client, tuple) else client} / "
                f"{library[0] if isinstance(library, tuple) else library}",
            ]
        )
    except ImportError:
        pass
    rows.append(["load average (1 min), start → end", f"{load_before} → {load_after}"])
    return rows


def render(results: list[SuiteResult], options: Options, started: datetime, machine: list[list[str]]) -> str:
    total = sum(r.seconds for r in results)
    mode = (
        "quick smoke run (`--quick`): short measurements, figures are indicative only"
        if options.quick
        else "full run"
    )
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python -m bench`) on {started:%Y-%m-%d %H:%M} UTC: {mode}, "
        f"{total:.0f} s for the suites {', '.join(f'`{r.name}`' for r in results)}. Every figure below "
        "comes from that one run on the machine described here, and each is shown beside a ceiling "
        "measured in the same run, so the ratios travel better between machines than the absolute "
        "figures do. The machine is shared (the broker and the registry run on it, and so may other "
        "work): the CPU columns say what else ran during each measurement. Do not edit by hand: run "
        "`make bench` again. The memory soak and the fault suite, at the end, come from their own runs "
        "(`make soak`, `make chaos`), dated in their sections.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], machine, align=["l", "l"]),
        "",
    ]
    targets = [t for r in results for t in r.targets]
    if targets:
        lines += [
            "## Targets",
            "",
            markdown_table(
                ["what", "target", "measured", "met"],
                [[t.what, t.wanted, t.measured, "yes" if t.met else "**no**"] for t in targets],
                align=["l", "l", "l", "l"],
            ),
            "",
        ]
    for result in results:
        lines += [f"## {result.title}", ""]
        for table in result.tables:
            if table.title:
                lines += [f"**{table.title}**", ""]
            lines += [markdown_table(table.headers, table.rows, table.align), ""]
        lines += [f"*How measured.* {result.how_measured}", ""]
        lines += [f"- {note}" for note in result.notes]
        if result.notes:
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure affluent on this machine, each figure beside a ceiling, into BENCHMARKS.md.",
    )
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run with short measurements")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated suites to run (default: all of {', '.join(SUITE_MODULES)})",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="report path, '-' for standard output"
    )
    parser.add_argument(
        "--profile-mllp",
        type=float,
        metavar="SECONDS",
        help="instead of benchmarking, profile the MLLP door's event loop under 16 senders and print it",
    )
    args = parser.parse_args(argv)

    if args.profile_mllp is not None:
        from bench.mllp import profile_door

        print(profile_door(args.profile_mllp))
        return 0

    try:
        suites = load_suites(args.only)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    options = Options(quick=args.quick)
    started = datetime.now(UTC)
    load_before = _load()
    results: list[SuiteResult] = []
    for name, suite in suites.items():
        print(f"bench: {name}...", flush=True)
        began = time.perf_counter()
        result = suite(options)
        result.seconds = result.seconds or time.perf_counter() - began
        results.append(result)
    report = render(results, options, started, machine_rows(load_before, _load()))
    if str(args.output) == "-":
        sys.stdout.write(report)
    else:
        # The blocks `make soak` and `make chaos` wrote stay, each with the date of its own run.
        previous = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        kept = carried_over(previous)
        args.output.write_text(f"{report.rstrip()}\n\n{kept}\n" if kept else report, encoding="utf-8")
        print(f"bench: wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
