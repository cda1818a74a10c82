"""End-to-end HL7 suite: MLLP in, national topics out, with everything on this box.

``affluent run`` (the MLLP door, the normalize and the pseudonymize workers, each its own process) runs
against the local broker and registry; the sender process of the MLLP suite drives 16 MLLP connections;
this process consumes the national ``hdh`` topics and stamps each record of the run on arrival.

* Latency, paced at 1,000 msgs/s: from ``envelope.ingest_time`` (the door's reception of the message,
  kept by the hdh policy) to the record's arrival in this consumer. The few hundred microseconds from
  the sender's write to the door's clock are left out; the MLLP suite measures them.
* Throughput, flat out: acknowledged messages over the time from the first send until the last of
  their national records arrived (the pipeline drained: nothing new for 5 s).
* Ceilings in the same run: a bare producer and a bare consumer on a scratch topic (Kafka's own rate
  on this box), and the bare parse+encode rate of one core (:func:`bench.stages.parse_encode_ceiling`).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from confluent_kafka import TopicPartition

from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer
from affluent.core.settings import KafkaSettings, load_settings
from affluent.sim.accounting import end_offsets
from bench import Options, register
from bench.machine import CpuLedger, stack_processes
from bench.mllp import (
    LoadResult,
    LoadSpec,
    SenderProcess,
    delete_topics,
    producer_throughput,
    sender_process,
)
from bench.pipeline import Pipeline
from bench.report import (
    SuiteResult,
    Table,
    Target,
    fmt_count,
    fmt_ms,
    fmt_percent,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    percentile,
)
from schemas.registry import Registry, decode

PACED_RATE = 1_000
SENDERS = 16
THROUGHPUT_TARGET = 3_000
P99_TARGET_S = 0.500
QUIET_S = 5.0


@dataclass(slots=True)
class Arrivals:
    """National records of this run, as (ingest time, arrival time) in epoch seconds, first arrival per
    event id: on a shared broker another pipeline may replay the same events, which is not latency."""

    stamps: list[tuple[float, float]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: float = 0.0

    def add(self, event_id: str, ingest: float, arrival: float) -> None:
        with self.lock:
            self.last = arrival
            if event_id not in self.seen:
                self.seen.add(event_id)
                self.stamps.append((ingest, arrival))

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        with self.lock:
            return [s for s in self.stamps if start <= s[0] < end]


class NationalWatcher:
    """Consumes the national hdh topics from their current end; keeps the records the bench sent."""

    def __init__(
        self, kafka: KafkaSettings, registry: Registry, topics: Iterable[str], facility: str
    ) -> None:
        self.registry = registry
        self.facility = facility
        self.arrivals = Arrivals()
        self.consumer = make_consumer(kafka, group_id=f"bench-e2e-{uuid.uuid4().hex[:8]}")
        self.consumer.assign(end_offsets(self.consumer, topics))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-e2e-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # consume() waits for its 500 records or its timeout: a long timeout would be stamped on
            # every record as latency, so it stays at a few milliseconds.
            for msg in self.consumer.consume(500, 0.005):
                if msg.error() is not None or msg.value() is None:
                    continue
                arrived = time.time()
                envelope = decode(self.registry, msg.value() or b"")["envelope"]
                if not str(envelope["source"]["facility"]).startswith(self.facility):
                    continue
                ingest = envelope["ingest_time"]
                if isinstance(ingest, datetime):
                    self.arrivals.add(str(envelope["event_id"]), ingest.timestamp(), arrived)

    def wait_quiet(self, since: float, quiet_s: float, cap_s: float) -> float:
        """Epoch seconds of the last arrival once nothing came for `quiet_s` (or at the cap)."""
        deadline = time.monotonic() + cap_s
        while time.monotonic() < deadline:
            last = self.arrivals.last
            if last >= since and time.time() - last > quiet_s:
                break
            time.sleep(0.5)
        return self.arrivals.last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def consumer_throughput(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 60) -> float:
    """Records/s a bare consumer reads a topic from its start (the Kafka side of every worker)."""
    consumer = make_consumer(kafka, group_id=f"bench-e2e-{uuid.uuid4().hex[:8]}")
    md = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    got = 0
    started = time.perf_counter()
    deadline = started + timeout_s
    first: float | None = None
    while got < expected and time.perf_counter() < deadline:
        batch = consumer.consume(1000, 0.5)
        if batch and first is None:
            first = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
    elapsed = time.perf_counter() - (first or started)
    consumer.close()
    return got / elapsed if elapsed > 0 else 0.0


@dataclass(slots=True)
class PacedRun:
    """One paced run: what the senders saw, the latencies of its measured window (sorted, seconds) and
    how long the pipeline took to drain after the last send."""

    load: LoadResult
    latencies: list[float]
    drain_s: float

    def row(self, label: str) -> list[str]:
        lat = self.latencies
        return [
            label,
            fmt_rate(self.load.window_acks / self.load.window_s),
            fmt_count(len(lat)),
            fmt_ms(percentile(lat, 50)),
            fmt_ms(percentile(lat, 99)),
            fmt_ms(lat[-1]) if lat else "n/a",
            f"{max(0.0, self.drain_s):.1f} s",
        ]


def paced_run(
    sender: SenderProcess,
    watcher: NationalWatcher,
    port: int,
    payloads: list[bytes],
    rate: float,
    warmup_s: float,
    measured_s: float,
) -> PacedRun:
    print(f"  e2e: paced {rate:.0f} msgs/s for {warmup_s + measured_s:.0f} s", flush=True)
    begin = time.time()
    load = sender.run(
        LoadSpec(port, SENDERS, warmup_s, measured_s, f"P{uuid.uuid4().hex[:5]}", payloads, rate)
    )
    end = watcher.wait_quiet(begin, QUIET_S, 300)
    window = watcher.arrivals.between(begin + warmup_s, begin + warmup_s + measured_s)
    latencies = sorted(arrival - ingest for ingest, arrival in window)
    return PacedRun(load, latencies, end - (begin + warmup_s + measured_s))


def _payloads() -> list[bytes]:
    from affluent.sim.synthetic import messages

    return messages(400, seed=23)


def _acked(load: LoadResult) -> int:
    return load.codes["AA"] + load.codes["CA"]


# The pipeline's own processes, in the order of the CPU table; the rest is the bench's harness.
PIPELINE = ("mllp", "normalize", "pseudonymize", "fhir", "devices", "supervisor")
LABELS = {
    "mllp": "MLLP door",
    "normalize": "normalize worker",
    "pseudonymize": "pseudonymize worker",
    "fhir": "FHIR door (idle)",
    "devices": "devices door (idle)",
    "supervisor": "`affluent run` supervisor",
    "registry": "schema registry",
    "sender": "bench: MLLP sender process",
    "watcher": "bench: this process (national consumer)",
}


def _measured_processes(pipe: Pipeline, sender_pid: int | None) -> dict[str, int]:
    pids = {name: int(child["pid"]) for name, child in pipe.children().items() if child.get("pid")}
    pids["supervisor"] = pipe.process.pid
    pids |= stack_processes()
    if sender_pid is not None:
        pids["sender"] = sender_pid
    pids["watcher"] = os.getpid()
    return pids


def _cpu_rows(ledger: CpuLedger, messages: int) -> tuple[list[list[str]], float]:
    """Rows of the CPU table and the pipeline's µs per message: its processes, the broker(s), the
    registry and the kernel's network work (loopback TCP), not the bench's sender and consumer."""
    per = max(1, messages)
    seconds = ledger.seconds
    pipeline_names = [n for n in seconds if n in PIPELINE or n.startswith("kafka-") or n == "registry"]
    pipeline_s = sum(seconds[n] for n in pipeline_names) + ledger.kernel_s
    pipeline_us = pipeline_s / per * 1e6

    def row(label: str, cpu_s: float, share: bool = True) -> list[str]:
        return [
            label,
            f"{cpu_s:.1f}",
            fmt_us(cpu_s / per),
            fmt_percent(cpu_s / pipeline_s) if share and pipeline_s else "",
        ]

    ordered = sorted(pipeline_names, key=lambda n: PIPELINE.index(n) if n in PIPELINE else len(PIPELINE))
    rows = [row(LABELS.get(n, f"broker {n}" if n.startswith("kafka-") else n), seconds[n]) for n in ordered]
    rows.append(row("kernel: interrupts and network (softirq)", ledger.kernel_s))
    rows.append(row("**pipeline total**", pipeline_s))
    for name in ("sender", "watcher"):
        if name in seconds:
            rows.append(row(LABELS[name], seconds[name], share=False))
    rows.append(row("everything else on the machine", ledger.others_s, share=False))
    return rows, pipeline_us


@register("e2e")
def run(options: Options) -> SuiteResult:
    from bench.pipeline import running_pipeline
    from bench.stages import parse_encode_ceiling
    from schemas.catalog import NATIONAL_TOPICS

    settings = load_settings()
    started = time.perf_counter()
    paced_s = options.seconds(30.0, 8.0)
    flat_s = options.seconds(30.0, 8.0)
    warmup_s = options.seconds(5.0, 2.0)
    registry = Registry(settings.registry)
    hdh_topics = sorted(t for t in NATIONAL_TOPICS if t.startswith("national.hdh."))
    payloads = _payloads()
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as logs,
        running_pipeline(settings, Path(logs)) as pipe,
    ):
        watcher = NationalWatcher(settings.kafka, registry, hdh_topics, "BENCH")
        try:
            with sender_process() as sender:
                paced = paced_run(sender, watcher, pipe.mllp_port, payloads, PACED_RATE, warmup_s, paced_s)
                print(f"  e2e: flat out with {SENDERS} senders for {warmup_s + flat_s:.0f} s", flush=True)
                ledger = CpuLedger(_measured_processes(pipe, sender.pid))
                flat_begin = time.time()
                flat = sender.run(
                    LoadSpec(pipe.mllp_port, SENDERS, warmup_s, flat_s, f"F{uuid.uuid4().hex[:5]}", payloads)
                )
                flat_end = watcher.wait_quiet(flat_begin, QUIET_S, 600)
                ledger.stop()
                flat_records = len(watcher.arrivals.between(flat_begin, flat_end + 1))
                e2e_rate = _acked(flat) / max(1e-9, flat_end - flat_begin)
                # The latency of a pipeline that keeps up: half of what it sustained just now.
                easy_rate = max(50.0, round(e2e_rate / 2 / 50) * 50)
                easy = paced_run(sender, watcher, pipe.mllp_port, payloads, easy_rate, warmup_s, paced_s)
        finally:
            watcher.stop()
    door_rate = flat.window_acks / flat.window_s
    national_per_msg = flat_records / max(1, _acked(flat))

    print("  e2e: ceilings (raw produce, raw consume, parse+encode)", flush=True)
    scratch = f"bench.e2e.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.kafka, [TopicSpec(scratch, partitions=3)])
    try:
        records = [(p, b"BENCH|APP") for p in payloads]
        produced = producer_throughput(settings.kafka, scratch, records, options.seconds(5.0, 2.0))
        consumed = consumer_throughput(
            settings.kafka, scratch, int(produced.rate * options.seconds(5.0, 2.0))
        )
    finally:
        delete_topics(settings.kafka, [scratch])
    parse_encode = parse_encode_ceiling(options.seconds(2.0, 0.5))

    latencies = paced.latencies
    p99 = percentile(latencies, 99)
    cpu_rows, pipeline_us = _cpu_rows(ledger, _acked(flat))
    cores = os.cpu_count() or 1
    cpu_ceiling = cores * 1e6 / pipeline_us if pipeline_us else math.nan
    rows = [
        paced.row(f"paced {fmt_rate(PACED_RATE)} msgs/s, {SENDERS} MLLP connections"),
        [
            f"flat out, {SENDERS} MLLP connections",
            fmt_rate(door_rate),
            fmt_count(flat_records),
            "",
            "",
            "",
            f"{max(0.0, flat_end - (flat_begin + warmup_s + flat_s)):.1f} s",
        ],
        easy.row(f"paced {fmt_rate(easy_rate)} msgs/s (half the flat-out end-to-end rate)"),
    ]
    ceilings = [
        [
            "end to end, flat out (acknowledged msgs ÷ first send → last national record)",
            fmt_rate(e2e_rate),
            "1.00×",
        ],
        [
            f"ceiling: {cores} cores ÷ the pipeline's CPU per message "
            f"({fmt_us(pipeline_us / 1e6)}, table below)",
            fmt_rate(cpu_ceiling),
            fmt_ratio(e2e_rate / cpu_ceiling),
        ],
        [
            "ceiling: bare Kafka producer, door's configuration (records/s)",
            fmt_rate(produced.rate),
            fmt_ratio(e2e_rate / produced.rate),
        ],
        [
            "ceiling: bare Kafka consumer (records/s)",
            fmt_rate(consumed),
            fmt_ratio(e2e_rate / consumed) if consumed else "",
        ],
        [
            "ceiling: parse + encode, one core (HL7 msgs/s)",
            fmt_rate(parse_encode),
            fmt_ratio(e2e_rate / parse_encode),
        ],
    ]
    return SuiteResult(
        name="e2e",
        title="End to end: HL7 v2 over MLLP → national topics (affluent run on this box)",
        tables=[
            Table(
                ["run", "door acks/s", "national hdh records", "p50", "p99", "max", "drain after sending"],
                rows,
                title="Latency (door reception → national record consumed) and drain",
            ),
            Table(
                ["figure", "msgs/s", "end to end vs ceiling"], ceilings, title="Throughput and its ceilings"
            ),
            Table(
                ["process", "CPU seconds", "CPU per acknowledged message", "share of the pipeline"],
                cpu_rows,
                title="Where the CPU of the flat-out run went (first send → last national record)",
            ),
        ],
        how_measured=(
            "`affluent run` (MLLP door, normalize and pseudonymize workers, three processes) with the local "
            "broker and registry on the same machine, fresh consumer groups positioned at the topics' ends, "
            f"the local demo keys. A spawned sender process drives {SENDERS} stop-and-wait MLLP connections "
            f"with synthetic ADT/ORU messages (unique MSH-10 each), first paced at {PACED_RATE} msgs/s "
            f"({warmup_s:.0f} s warm-up + {paced_s:.0f} s measured), then flat out, then paced at half "
            "the flat-out end-to-end rate (the latency of a pipeline that keeps up). This process consumes "
            "the national hdh topics and stamps each record of the run on arrival; latency = arrival − "
            "envelope.ingest_time (the door's reception), for messages received in the measured window. "
            f"The throughput run ends when no new national record came for {QUIET_S:.0f} s. "
            f"{national_per_msg:.2f} national hdh records per acknowledged message (inca gets as many "
            "again, except encounters). CPU: utime + stime from /proc/<pid>/stat of each process (threads "
            "included), the kernel's irq + softirq from /proc/stat, over the flat-out run until it drained; "
            "the FHIR door's validation processes and anything else fall under 'everything else'."
        ),
        targets=[
            Target(
                "HL7 end to end (MLLP → national)",
                f"≥ {fmt_rate(THROUGHPUT_TARGET)} msgs/s",
                f"{fmt_rate(e2e_rate)} msgs/s",
                e2e_rate >= THROUGHPUT_TARGET,
            ),
            Target(
                f"HL7 end-to-end p99 at {fmt_rate(PACED_RATE)} msgs/s",
                f"≤ {fmt_ms(P99_TARGET_S)}",
                fmt_ms(p99),
                bool(latencies) and p99 <= P99_TARGET_S,
            ),
        ],
        notes=[
            *(
                [
                    "The pipeline had not drained the paced run when the flat-out run started (drain capped "
                    "at 300 s): the flat-out figure also carries the rest of that backlog."
                ]
                if paced.drain_s > 290
                else []
            ),
            f"Paced run: {_acked(paced.load)} messages acknowledged, answers {dict(paced.load.codes)}; "
            "flat-out run: "
            f"{_acked(flat)} acknowledged, answers {dict(flat.codes)}.",
        ],
        seconds=time.perf_counter() - started,
    )
