"""``affluent replay --stage normalize|pseudonymize --from T [--to T] [--source hl7v2]``: re-run a stage
over a time range after a fix, without touching the workers' consumer group.

``normalize`` reads the raw topics (after a mapping fix); ``pseudonymize`` reads the canonical topics
and writes national records (after a policy fix, or an objection whose retraction must be followed by
what is still allowed): with the current key, so national event ids are the ones the workers write.

Resetting the workers' offsets by hand replays a whole partition tail and stops the live flow; this
reads the raw topics from Kafka's time index at ``--from`` up to ``--to`` (or each partition's end as
the command started), puts every record through the stage's own pure ``process`` (the very function
the workers run) and writes its outputs where the workers would, durably, batch by batch. Outputs carry
the same deterministic event ids as before, so unchanged events collapse downstream; what the fix
changed arrives as new versions or new events. The run is recorded in the audit trail first, shows a
progress line (records, rate, ETA) and ends with what it wrote: events per kind and dead letters per
reason (compare with ``affluent dlq list`` over the same range to see what the fix changed).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from affluent.audit_cli import os_user
from affluent.core.errors import ConfigError
from affluent.core.kafka import wait_for_kafka
from affluent.core.producer import DurableProducer
from affluent.core.ranges import read_spans, spans
from affluent.core.settings import Settings
from affluent.core.topics import INGEST_DEVICE_RAW, INGEST_FHIR_RAW, INGEST_HL7V2_RAW
from affluent.dlq import _normalizer, pseudonymizer
from schemas.audit import AuditAction, AuditChannel, audit_entry
from schemas.audit_log import record_now
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE
from schemas.registry import Registry
from schemas.registry import decode as decode_record

SOURCES = {"hl7v2": INGEST_HL7V2_RAW, "fhir": INGEST_FHIR_RAW, "device": INGEST_DEVICE_RAW}
BATCH = 500


@dataclass
class Tally:
    """What a replay read and wrote (counts only: safe to print)."""

    read: int = 0
    events: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    what: str = "raw records"

    def lines(self, seconds: float) -> list[str]:
        rate = self.read / seconds if seconds > 0 else 0.0
        out = [f"replayed {self.read:,} {self.what} in {seconds:.1f} s ({rate:,.0f}/s)"]
        out += [f"  events   {kind:<24} {n:>8,}" for kind, n in sorted(self.events.items())]
        out += [f"  dead     {reason:<24} {n:>8,}" for reason, n in sorted(self.dead.items())]
        if not self.events and not self.dead:
            out.append("  nothing written")
        return out


def progress(done: int, total: int, started: float) -> str:
    """One progress line: a bar, records done of total, the rate and the time left."""
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = done / elapsed
    left = (total - done) / rate if rate > 0 else 0.0
    filled = int(30 * done / total) if total else 30
    return f"[{'#' * filled}{'.' * (30 - filled)}] {done:,}/{total:,} {rate:,.0f}/s ETA {left:,.0f} s"


def replay(
    settings: Settings,
    stage: str,
    start: datetime,
    end: datetime | None = None,
    sources: Sequence[str] = tuple(SOURCES),
    out: Callable[[str], None] = print,
    show_progress: bool = True,
    who: str | None = None,
) -> Tally:
    if stage not in ("normalize", "pseudonymize"):
        raise ConfigError(f"--stage {stage}: normalize or pseudonymize")
    if stage == "pseudonymize" and tuple(sources) != tuple(SOURCES):
        raise ConfigError("--source selects raw topics: it applies to --stage normalize only")
    if end is not None and end <= start:
        raise ConfigError("--to must be later than --from")
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ConfigError(f"--source {unknown[0]}: one of {', '.join(SOURCES)}")
    wait_for_kafka(settings.kafka, timeout_s=10)
    topics = [SOURCES[s] for s in sources] if stage == "normalize" else list(CANONICAL_TOPICS)
    ranges = spans(settings.kafka, topics, start, end)
    total = sum(span.stop - span.start for span in ranges)
    window = f"from {start.isoformat()}" + (f" to {end.isoformat()}" if end else "")
    record_now(
        settings,
        audit_entry(
            AuditAction.REPLAY, who or os_user(), AuditChannel.CLI, topics, attributes={"why": window}
        ),
    )
    tally = Tally(what="raw records" if stage == "normalize" else "canonical records")
    if not ranges:
        out("nothing to replay in that range")
        return tally
    opposition = None
    if stage == "normalize":
        process, dead_topic = _normalizer(settings).process, DLQ_NORMALIZE
    else:
        pseudonymize, opposition = pseudonymizer(settings)
        process, dead_topic = pseudonymize.process, DLQ_PSEUDONYMIZE
    registry = Registry(settings.registry)
    started = time.monotonic()

    async def run() -> None:
        producer = DurableProducer(settings.kafka)
        pending: list[tuple[str, bytes | None, bytes | None]] = []
        try:
            last_shown = 0.0
            for record in read_spans(settings.kafka, ranges):
                tally.read += 1
                outputs = process(record.value, record.topic, record.partition, record.offset)
                for output in outputs:
                    pending.append((output.topic, output.value, output.key))
                    if output.topic == dead_topic and output.value is not None:
                        tally.dead[str(decode_record(registry, output.value)["reason_code"])] += 1
                    else:
                        tally.events[output.topic.removeprefix("canonical.")] += 1
                if len(pending) >= BATCH:
                    await producer.send_all(pending)
                    pending = []
                now = time.monotonic()
                if show_progress and now - last_shown > 0.5:
                    sys.stderr.write("\r" + progress(tally.read, total, started))
                    last_shown = now
            if pending:
                await producer.send_all(pending)
        finally:
            producer.flush()
            if show_progress:
                sys.stderr.write("\r" + progress(tally.read, total, started) + "\n")

    try:
        asyncio.run(run())
    finally:
        if opposition is not None:
            opposition.stop()
    for line in tally.lines(time.monotonic() - started):
        out(line)
    return tally
