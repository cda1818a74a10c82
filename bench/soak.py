"""``make soak``: the pipeline under steady HL7 traffic for minutes, memory of every process sampled.

``affluent run`` (door and workers) is fed at a steady rate by the MLLP sender process while the
resident memory (VmRSS) of the supervisor and of each child is read from /proc every ``--every``
seconds. Memory is called *flat* when, after the warm-up (the first fifth of the run: imports, caches,
librdkafka buffers filling), it grows by less than ``--tolerance`` to the end; a leak grows without
bound, a warm-up does not. A restarted child (new pid) is reported, since it would hide a leak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from affluent.core.settings import load_settings
from bench.mllp import LoadResult, LoadSpec, sender_process
from bench.report import markdown_table
from bench.sections import DEFAULT_REPORT, write_section

SENDERS = 8


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def growth(samples: Sequence[int], warmup_share: float = 0.2) -> float:
    """Relative RSS growth from the end of the warm-up to the end of the run (0.05 = +5 %): the
    median of the samples around each end, so that one GC cycle does not decide."""
    if len(samples) < 5:
        return float("nan")
    start = max(1, int(len(samples) * warmup_share))
    head = sorted(samples[start : start + 3])
    tail = sorted(samples[-3:])
    base = head[len(head) // 2]
    return (tail[len(tail) // 2] - base) / base if base else float("nan")


def is_flat(samples: Sequence[int], tolerance: float) -> bool:
    g = growth(samples)
    return g == g and g < tolerance  # NaN (too few samples) is not flat


def soak(minutes: float, rate: float, every_s: float, tolerance: float) -> tuple[str, bool]:
    from affluent.sim.synthetic import messages
    from bench.pipeline import running_pipeline

    settings = load_settings()
    started = datetime.now(UTC)
    duration = minutes * 60
    series: dict[str, list[int]] = {}
    pids: dict[str, set[int]] = {}
    load: list[LoadResult] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as logs, running_pipeline(settings, Path(logs)) as pipe:
        spec = LoadSpec(
            pipe.mllp_port, SENDERS, 0.0, duration, f"K{uuid.uuid4().hex[:5]}", messages(400, seed=29), rate
        )
        with sender_process() as sender:
            driver = threading.Thread(target=lambda: load.append(sender.run(spec)), daemon=True)
            driver.start()
            began = time.monotonic()
            cache_url = pipe.children().get("mllp", {}).get("metrics")
            cache = [ack_cache_entries(cache_url)]
            while driver.is_alive():
                processes = {"supervisor": pipe.process.pid}
                processes.update(
                    {name: child["pid"] for name, child in pipe.children().items() if child["pid"]}
                )
                for name, pid in processes.items():
                    kib = rss_kib(pid)
                    if kib is not None:
                        series.setdefault(name, []).append(kib)
                        pids.setdefault(name, set()).add(pid)
                elapsed = time.monotonic() - began
                print(
                    f"  soak: {elapsed:5.0f} s  "
                    + "  ".join(f"{n} {v[-1] / 1024:.0f} MiB" for n, v in series.items()),
                    flush=True,
                )
                driver.join(every_s)
            cache.append(ack_cache_entries(cache_url))
    rows = []
    flat = True
    for name, samples in series.items():
        ok = is_flat(samples, tolerance)
        flat = flat and ok and len(pids[name]) == 1
        rows.append(
            [
                name,
                str(len(samples)),
                f"{samples[0] / 1024:.0f}",
                f"{max(samples) / 1024:.0f}",
                f"{samples[-1] / 1024:.0f}",
                f"{growth(samples) * 100:+.1f} %",
                "flat" if ok else "**growing**",
                str(len(pids[name]) - 1),
            ]
        )
    acked = (load[0].codes["AA"] + load[0].codes["CA"]) if load else 0
    text = "\n".join(
        [
            f"## Memory soak: {minutes:g} min at {rate:g} HL7 msgs/s over {SENDERS} MLLP connections",
            "",
            f"Written by `make soak` (`python -m bench.soak`) on {started:%Y-%m-%d %H:%M} UTC, its own run "
            f"(not the `make bench` run above): {acked} messages acknowledged.",
            "",
            markdown_table(
                [
                    "process",
                    "samples",
                    "first MiB",
                    "max MiB",
                    "last MiB",
                    "growth after warm-up",
                    "verdict",
                    "restarts",
                ],
                rows,
            ),
            "",
            f"RSS every {every_s:g} s from /proc/<pid>/status; growth = median of the last 3 samples vs the "
            f"median of 3 samples after the first fifth of the run; flat below +{tolerance * 100:.0f} %.",
            *_ack_cache_note(series.get("mllp", []), cache[0], cache[-1]),
            "",
            f"Memory {'flat' if flat else 'NOT flat'}.",
        ]
    )
    return text, flat


def ack_cache_entries(metrics_url: str | None) -> int | None:
    """The door's ``affluent_mllp_ack_cache_entries`` gauge, None when it cannot be read."""
    if not metrics_url:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "affluent_mllp_ack_cache_entries":
            return int(family.samples[0].value)
    return None


def _ack_cache_note(door_kib: Sequence[int], first: int | None, last: int | None) -> list[str]:
    """The door grows by design: one ACK-cache entry per acknowledged message, up to a bound. Say what an
    entry costs here and where the bound puts the door, so that growth is not read as a leak (or the
    bound as generous) without figures."""
    from connectors.mllp.ackcache import MAX_ENTRIES

    if len(door_kib) < 2 or first is None or last is None:
        return []
    grown = last - first
    text = (
        "The MLLP door keeps one ACK-cache entry per acknowledged message (duplicate detection, bounded "
        f"at {MAX_ENTRIES:,} entries, oldest out first; gauge `affluent_mllp_ack_cache_entries`): "
        f"{first:,} entries at the start of the run, {last:,} at its end"
    )
    growth_bytes = (door_kib[-1] - door_kib[0]) * 1024
    if grown > 0 and growth_bytes > 0:
        per_entry = growth_bytes / grown
        text += (
            f"; the door grew about {per_entry:.0f} bytes per new entry, so it levels off near "
            f"{per_entry * MAX_ENTRIES / 2**20:.0f} MiB above its base at the bound."
        )
    elif last >= MAX_ENTRIES:
        text += ": the cache is at its bound, so new entries replace old ones and the door stays level."
    else:
        text += "."
    return ["", text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="HL7 messages per second")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--tolerance", type=float, default=0.10, help="growth still called flat")
    parser.add_argument(
        "--output",
        default=str(DEFAULT_REPORT),
        help="report whose 'soak' section is rewritten, '-' for standard output only",
    )
    args = parser.parse_args(argv)
    text, flat = soak(args.minutes, args.rate, args.every, args.tolerance)
    sys.stdout.write(text + "\n")
    if args.output != "-":
        write_section("soak", text, Path(args.output))
        print(f"soak: wrote its section of {args.output}", flush=True)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
