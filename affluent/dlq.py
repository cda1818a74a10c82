"""``affluent dlq list|show|redrive``: where messages stopped and why, and handing one back after a fix.

An operator's first questions on a dead letter are "how many, of what, from whom, since when" and
"what exactly was refused". ``list`` answers the first by reading the dead-letter topics within a time
range and counting by (topic, stage, reason, sending facility); ``show`` answers the second for one
raw id: every dead letter of that message with its reason, location and rule, and the refused payload
decoded (HL7 per its MSH-18, JSON pretty-printed). The dead-letter topics are hospital-internal: they
hold the refused payloads, so ``show`` prints identifying data to the operator's terminal, and nothing
else does.

Reads are bounded: from the first offset at ``--since`` (Kafka's time index) to each partition's end
as it was when the command started, with a throw-away consumer group that commits nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from affluent.audit_cli import os_user
from affluent.core.errors import ConfigError
from affluent.core.kafka import wait_for_kafka
from affluent.core.producer import DurableProducer
from affluent.core.ranges import Span, read_range, read_spans
from affluent.core.settings import Settings
from affluent.core.topics import DLQ_INGEST
from formats.hl7.charset import UnknownCharset, decode
from schemas.audit import AuditAction, AuditChannel, audit_entry
from schemas.audit_log import record_now
from schemas.catalog import DLQ_NORMALIZE, DLQ_PSEUDONYMIZE
from schemas.registry import Registry
from schemas.registry import decode as decode_record

DLQ_TOPICS = (DLQ_INGEST, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of ``dlq list``: how many dead letters share a topic, stage, reason and sender."""

    topic: str
    stage: str
    reason_code: str
    facility: str
    count: int
    first: datetime
    last: datetime


def summarize(records: Iterable[tuple[str, dict[str, Any]]]) -> list[Row]:
    """Count (topic, record) pairs by topic, stage, reason and sending facility; most frequent first."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    first: dict[tuple[str, str, str, str], datetime] = {}
    last: dict[tuple[str, str, str, str], datetime] = {}
    for topic, record in records:
        key = (topic, str(record["stage"]), str(record["reason_code"]), str(record["source"]["facility"]))
        when: datetime = record["failed_at"]
        counts[key] += 1
        first[key] = min(first.get(key, when), when)
        last[key] = max(last.get(key, when), when)
    return [
        Row(*key, count, first[key], last[key])
        for key, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def render_rows(rows: Sequence[Row]) -> list[str]:
    if not rows:
        return ["no dead letters in that range"]
    lines = [f"{'topic':<17} {'stage':<12} {'reason':<24} {'facility':<20} {'count':>6}  first .. last (UTC)"]
    for r in rows:
        span = f"{r.first:%Y-%m-%d %H:%M:%S} .. {r.last:%Y-%m-%d %H:%M:%S}"
        lines.append(
            f"{r.topic:<17} {r.stage:<12} {r.reason_code:<24} {r.facility or '-':<20} {r.count:>6}  {span}"
        )
    lines.append(f"{sum(r.count for r in rows)} dead letters")
    return lines


def payload_text(payload: bytes | None, content_type: str | None) -> str:
    """The refused payload as an operator reads it: HL7 segments one per line, JSON indented."""
    if payload is None:
        return "(no payload: the input could not be read at all)"
    kind = (content_type or "").lower()
    if "hl7" in kind or payload.lstrip()[:3] in (b"MSH", b"BHS", b"FHS"):
        try:
            text = decode(payload).text
        except UnknownCharset:
            text = payload.decode("latin-1")
        return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return payload.decode("utf-8", "replace")


def render_record(topic: str, record: dict[str, Any]) -> list[str]:
    lineage = record.get("lineage")
    source = record["source"]
    fields = [
        ("topic", topic),
        ("stage", record["stage"]),
        ("reason", f"{record['reason_code']}: {record['reason']}"),
        ("location", record.get("location") or "-"),
        ("rule", record.get("rule") or "-"),
        ("failed at", f"{record['failed_at']:%Y-%m-%d %H:%M:%S} UTC"),
        ("source", " / ".join(str(source.get(k) or "-") for k in ("facility", "application", "connector"))),
        ("raw id", record.get("raw_id") or "-"),
        ("event id", record.get("event_id") or "-"),
        ("input", f"{lineage['topic']}[{lineage['partition']}]@{lineage['offset']}" if lineage else "-"),
    ]
    fields += [(f"attribute {k}", v) for k, v in sorted((record.get("attributes") or {}).items())]
    lines = [f"{name:<20} {value}" for name, value in fields]
    lines += ["payload:", payload_text(record.get("raw_payload"), record.get("content_type"))]
    return lines


def read(
    settings: Settings,
    topics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    wait_s: float = 10.0,
) -> list[tuple[str, dict[str, Any]]]:
    """Every dead letter of ``topics`` failed in [since, until), up to each partition's end at the start."""
    wait_for_kafka(settings.kafka, timeout_s=wait_s)
    registry = Registry(settings.registry)
    out: list[tuple[str, dict[str, Any]]] = []
    for record in read_range(settings.kafka, topics, since, None, wait_s):
        if record.value is None:
            continue
        letter = decode_record(registry, record.value)
        failed: datetime = letter["failed_at"]
        if (since is None or failed >= since) and (until is None or failed < until):
            out.append((record.topic, letter))
    return out


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time for --since/--until; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} {text[:40]!r} is not an ISO 8601 time, e.g. 2026-12-01T08:00 or 2026-12-01T08:00+01:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def list_cmd(
    settings: Settings,
    topics: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    reason: str | None,
    facility: str | None,
    as_json: bool,
    out: Callable[[str], None] = print,
) -> int:
    records = [
        (t, r)
        for t, r in read(settings, topics, since, until)
        if (reason is None or r["reason_code"] == reason)
        and (facility is None or r["source"]["facility"] == facility)
    ]
    rows = summarize(records)
    if as_json:
        for row in rows:
            out(
                json.dumps(
                    {
                        "topic": row.topic,
                        "stage": row.stage,
                        "reason_code": row.reason_code,
                        "facility": row.facility,
                        "count": row.count,
                        "first": row.first.isoformat(),
                        "last": row.last.isoformat(),
                    }
                )
            )
    else:
        for line in render_rows(rows):
            out(line)
    return sum(row.count for row in rows)


def show_cmd(
    settings: Settings,
    raw_id: str,
    topics: Sequence[str],
    since: datetime | None,
    out: Callable[[str], None] = print,
    who: str | None = None,
) -> int:
    """Every dead letter of the message with this raw id (a prefix of 8 characters or more is enough).

    The payloads identify patients: the read is recorded in the audit trail first (who, which topics),
    and nothing is read when that record cannot be written (as for ``affluent tail``)."""
    if len(raw_id) < 8:
        raise ConfigError(f"raw id {raw_id!r} is too short: give at least 8 characters of it")
    record_now(settings, audit_entry(AuditAction.TOPIC_READ, who or os_user(), AuditChannel.CLI, topics))
    found = [
        (t, r) for t, r in read(settings, topics, since) if str(r.get("raw_id") or "").startswith(raw_id)
    ]
    if not found:
        raise ConfigError(
            f"no dead letter with raw id {raw_id} in {', '.join(topics)}"
            + (f" since {since:%Y-%m-%d %H:%M}" if since else "")
            + ": check the id with `affluent dlq list`, or widen --since"
        )
    for n, (topic, record) in enumerate(found):
        if n:
            out("")
        for line in render_record(topic, record):
            out(line)
    return len(found)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the normalize stage does with a dead-lettered input today (a dry run of its pure process)."""

    topic: str
    partition: int
    offset: int
    refused_for: frozenset[str]  # the reasons the input was dead-lettered for
    reasons_now: frozenset[str]  # the reasons it would be dead-lettered for now (empty: it maps)
    events: int  # canonical events it would produce now

    @property
    def refused_again(self) -> bool:
        """Refused again *for the same reason*: re-driving would only add a dead letter."""
        return bool(self.refused_for & self.reasons_now)

    def line(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        if not self.reasons_now:
            was = ", ".join(sorted(self.refused_for))
            return f"{where}: maps now ({self.events} events); was refused for {was}"
        again = "again " if self.refused_again else ""
        return f"{where}: refused {again}for {', '.join(sorted(self.reasons_now))} ({self.events} events)"


def _read_one(settings: Settings, topic: str, partition: int, offset: int) -> tuple[bytes | None, bytes]:
    """The (key, value) at one offset, or ConfigError when retention has removed it."""
    for record in read_spans(settings.kafka, [Span(topic, partition, offset, offset + 1)]):
        if record.offset == offset and record.value is not None:
            return record.key, record.value
    raise ConfigError(
        f"{topic}[{partition}]@{offset} is no longer in Kafka (retention): the sender must send it again"
    )


def _normalizer(settings: Settings) -> Any:
    from zoneinfo import ZoneInfo

    from prometheus_client import CollectorRegistry

    from streams.normalize.options import MappingOptions
    from streams.normalize.stage import NormalizeMetrics, Normalizer
    from streams.normalize.worker import default_mappers, device_mapper

    return Normalizer(
        Registry(settings.registry),
        MappingOptions(timezone=ZoneInfo(settings.streams.timezone)),
        NormalizeMetrics(CollectorRegistry()),
        default_mappers(device_mapper(settings)),
    )


def redrive_cmd(
    settings: Settings,
    raw_id: str,
    since: datetime | None,
    why: str,
    dry_run: bool = False,
    force: bool = False,
    out: Callable[[str], None] = print,
    who: str | None = None,
) -> list[Verdict]:
    """Hand a message's raw record back to the normalize stage, after a fix.

    The raw record is read again from its raw topic at the offset its dead letter names, put through
    the stage's own pure ``process`` (the dry run: the verdict is printed first), and, unless it would
    be refused again for the same reason (``force`` overrides), sent again to its raw topic with its
    key: the workers map it like any record, and because it keeps its raw id its event ids are the
    ones a first success would have had, so any earlier partial output collapses with it. The re-drive
    is recorded in the audit trail (who, which raw id, why) before anything is sent.
    """
    from schemas.registry import decode as decode_dead

    if len(raw_id) < 8:
        raise ConfigError(f"raw id {raw_id!r} is too short: give at least 8 characters of it")
    letters = [
        r for _, r in read(settings, [DLQ_NORMALIZE], since) if str(r.get("raw_id") or "").startswith(raw_id)
    ]
    if not letters:
        raise ConfigError(
            f"no dead letter in {DLQ_NORMALIZE} with raw id {raw_id}: `affluent dlq list --topic "
            f"{DLQ_NORMALIZE}` shows what is there (ingest dead letters are resent by their sender)"
        )
    full_ids = {str(r["raw_id"]) for r in letters}
    if len(full_ids) > 1:
        raise ConfigError(f"raw id {raw_id} names {len(full_ids)} messages: give more of it")
    inputs: dict[tuple[str, int, int], set[str]] = {}
    for record in letters:
        lineage = record.get("lineage")
        if lineage is None:
            continue
        inputs.setdefault((lineage["topic"], lineage["partition"], lineage["offset"]), set()).add(
            str(record["reason_code"])
        )
    normalizer = _normalizer(settings)
    registry = Registry(settings.registry)
    verdicts: list[Verdict] = []
    records: list[tuple[str, bytes | None, bytes | None]] = []  # (topic, value, key), as send_all takes
    for (topic, partition, offset), reasons in sorted(inputs.items()):
        key, value = _read_one(settings, topic, partition, offset)
        outputs = normalizer.process(value, topic, partition, offset)
        now = frozenset(
            str(decode_dead(registry, o.value)["reason_code"])
            for o in outputs
            if o.topic == DLQ_NORMALIZE and o.value
        )
        events = sum(1 for o in outputs if o.topic != DLQ_NORMALIZE)
        verdicts.append(Verdict(topic, partition, offset, frozenset(reasons), now, events))
        records.append((topic, value, key))
    for verdict in verdicts:
        out(verdict.line())
    if dry_run:
        return verdicts
    if any(v.refused_again for v in verdicts) and not force:
        raise ConfigError(
            "not re-driven: the stage would refuse it again for the same reason; fix the mapping "
            "(or the sender's data) first, or re-drive anyway with --force"
        )
    [full] = full_ids
    attributes = {"why": why, "forced": "yes" if force else "no"}
    record_now(
        settings,
        audit_entry(AuditAction.REDRIVE, who or os_user(), AuditChannel.CLI, [full], attributes=attributes),
    )

    async def send() -> None:
        producer = DurableProducer(settings.kafka)
        try:
            await producer.send_all(records)
        finally:
            producer.flush()

    asyncio.run(send())
    out(f"re-driven: {len(records)} raw record(s) sent again to the normalize stage (raw id {full[:16]}…)")
    return verdicts
