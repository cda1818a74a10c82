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
from affluent.core.ranges import Record, Span, read_range, read_spans
from affluent.core.settings import Settings
from affluent.core.topics import DLQ_INGEST, INGEST_DEVICE_RAW
from formats.hl7.charset import UnknownCharset, decode
from schemas.audit import AuditAction, AuditChannel, audit_entry
from schemas.audit_log import record_now
from schemas.catalog import DLQ_COHORT, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE
from schemas.registry import Registry
from schemas.registry import decode as decode_record

DLQ_TOPICS = (DLQ_INGEST, DLQ_NORMALIZE, DLQ_COHORT, DLQ_PSEUDONYMIZE)


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


def read_located(
    settings: Settings,
    topics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    wait_s: float = 10.0,
) -> list[tuple[Record, dict[str, Any]]]:
    """Every dead letter of ``topics`` failed in [since, until), with where it sits in Kafka."""
    wait_for_kafka(settings.kafka, timeout_s=wait_s)
    registry = Registry(settings.registry)
    out: list[tuple[Record, dict[str, Any]]] = []
    for record in read_range(settings.kafka, topics, since, None, wait_s):
        if record.value is None:
            continue
        letter = decode_record(registry, record.value)
        failed: datetime = letter["failed_at"]
        if (since is None or failed >= since) and (until is None or failed < until):
            out.append((record, letter))
    return out


def read(
    settings: Settings,
    topics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
    wait_s: float = 10.0,
) -> list[tuple[str, dict[str, Any]]]:
    """Every dead letter of ``topics`` failed in [since, until), up to each partition's end at the start."""
    return [(record.topic, letter) for record, letter in read_located(settings, topics, since, until, wait_s)]


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
    """What the refusing stage does with a dead-lettered input today (a dry run of its pure decision)."""

    topic: str
    partition: int
    offset: int
    refused_for: frozenset[str]  # the reasons the input was dead-lettered for
    reasons_now: frozenset[str]  # the reasons it would be dead-lettered for now (empty: it goes on)
    events: int  # what it would produce now: canonical events, national records, or readings
    what: str = "events"

    @property
    def refused_again(self) -> bool:
        """Refused again *for the same reason*: re-driving would only add a dead letter."""
        return bool(self.refused_for & self.reasons_now)

    def line(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        if not self.reasons_now:
            was = ", ".join(sorted(self.refused_for))
            return f"{where}: maps now ({self.events} {self.what}); was refused for {was}"
        again = "again " if self.refused_again else ""
        return (
            f"{where}: refused {again}for {', '.join(sorted(self.reasons_now))} ({self.events} {self.what})"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """One input to hand back: the verdict, and the record to send (topic, value, key) if it goes."""

    verdict: Verdict
    record: tuple[str, bytes | None, bytes | None]


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


def _inputs(letters: Iterable[dict[str, Any]]) -> dict[tuple[str, int, int], set[str]]:
    """The stage inputs the dead letters name (their lineage), with the reasons each was refused for."""
    inputs: dict[tuple[str, int, int], set[str]] = {}
    for record in letters:
        lineage = record.get("lineage")
        if lineage is not None:
            where = (str(lineage["topic"]), int(lineage["partition"]), int(lineage["offset"]))
            inputs.setdefault(where, set()).add(str(record["reason_code"]))
    return inputs


def _stage_plans(
    settings: Settings, letters: Sequence[dict[str, Any]], process: Any, dead_topic: str, what: str
) -> list[Plan]:
    """Each input a stage dead-lettered, put through the stage's own pure ``process`` again."""
    registry = Registry(settings.registry)
    plans = []
    for (topic, partition, offset), reasons in sorted(_inputs(letters).items()):
        key, value = _read_one(settings, topic, partition, offset)
        outputs = process(value, topic, partition, offset)
        now = frozenset(
            str(decode_record(registry, o.value)["reason_code"])
            for o in outputs
            if o.topic == dead_topic and o.value
        )
        produced = sum(1 for o in outputs if o.topic != dead_topic)
        verdict = Verdict(topic, partition, offset, frozenset(reasons), now, produced, what)
        plans.append(Plan(verdict, (topic, value, key)))
    return plans


def _normalize_plans(settings: Settings, letters: Sequence[dict[str, Any]]) -> list[Plan]:
    return _stage_plans(settings, letters, _normalizer(settings).process, DLQ_NORMALIZE, "events")


def pseudonymizer(settings: Settings) -> tuple[Any, Any]:
    """The pseudonymize stage as its worker builds it — keys, policies, the opposition registry read to
    its end — without the worker: (stage, opposition view). Stop the view when done."""
    from prometheus_client import CollectorRegistry

    from affluent.core.compacted import CompactedView
    from affluent.core.topics import CONTROL_OPPOSITION
    from streams.pseudonymize.stage import PseudonymizeMetrics, Pseudonymizer
    from streams.pseudonymize.worker import build_feeds, load_keys

    keys = load_keys()  # KeyConfigError (one line) where the worker's keys are not
    opposition = CompactedView(settings.kafka, CONTROL_OPPOSITION, name="operator-opposition")
    opposition.start(timeout_s=30)
    try:
        stage = Pseudonymizer(
            Registry(settings.registry),
            build_feeds(keys),
            opposition,
            keys,
            PseudonymizeMetrics(CollectorRegistry()),
        )
    except BaseException:
        opposition.stop()
        raise
    return stage, opposition


def _pseudonymize_plans(settings: Settings, letters: Sequence[dict[str, Any]]) -> list[Plan]:
    """The canonical record a pseudonymize dead letter names, through the stage with its keys, policies
    and the opposition registry as they are now; re-driven, it goes back to its canonical topic."""
    stage, opposition = pseudonymizer(settings)
    try:
        return _stage_plans(settings, letters, stage.process, DLQ_PSEUDONYMIZE, "national records")
    finally:
        opposition.stop()


DEVICE_CONNECTORS = ("devices_mqtt", "devices_http")


def _ingest_plans(settings: Settings, located: Sequence[tuple[Record, dict[str, Any]]]) -> list[Plan]:
    """A device payload the door dead-lettered (MQTT: the broker was acknowledged, the gateway will not
    send it again; HTTP: a 403 for a device bound elsewhere), judged again by the door's own rule with
    the templates and device registry as they are now. Re-driven, it is stored as the door would have
    stored it: same raw id, so its readings keep the event ids a first success would have had."""
    from affluent.core.compacted import CompactedView
    from affluent.core.topics import CONTROL_DEVICES, value_subject
    from connectors.devices.intake import judge, raw_message
    from connectors.devices.mqtt import gateway_of, mapping_for
    from formats.devices.registry import DeviceRegistry
    from formats.devices.templates import PayloadError, load_templates
    from schemas.registry import AvroCodec, load_schema

    codec = AvroCodec(
        Registry(settings.registry), value_subject(INGEST_DEVICE_RAW), load_schema("raw_message"), "BACKWARD"
    )
    templates = load_templates(settings.devices.templates_dir)
    bindings = CompactedView(settings.kafka, CONTROL_DEVICES, name="redrive-devices")
    bindings.start(timeout_s=30)
    bindings.stop()
    devices = DeviceRegistry(bindings.get)
    plans = []
    for record, letter in located:
        source = letter["source"]
        sender, mapping, connector = (
            str(source["facility"]),
            str(source["application"]),
            str(source["connector"]),
        )
        payload = letter.get("raw_payload") or b""
        topics = settings.devices.mqtt.topics
        mqtt = connector == "devices_mqtt"
        mapping = mapping or (mapping_for(topics, sender) if mqtt else None) or ""
        gateway = gateway_of(topics, sender) if mqtt else sender
        reasons_now: frozenset[str] = frozenset()
        readings = 0
        stored: tuple[str, bytes | None, bytes | None] = (INGEST_DEVICE_RAW, None, None)
        try:
            template, found = judge(
                templates, mapping, payload, devices, gateway, settings.devices.require_gateway_binding
            )
            readings = len(found)
            message = raw_message(connector, sender, template, payload, readings)
            stored = (INGEST_DEVICE_RAW, codec.encode(message.record(datetime.now(UTC))), message.key)
        except PayloadError as exc:
            reasons_now = frozenset({str(exc.code)})
        verdict = Verdict(
            record.topic,
            record.partition,
            record.offset,
            frozenset({str(letter["reason_code"])}),
            reasons_now,
            readings,
            "readings",
        )
        plans.append(Plan(verdict, stored))
    return plans


def redrive_cmd(
    settings: Settings,
    raw_id: str,
    since: datetime | None,
    why: str,
    dry_run: bool = False,
    force: bool = False,
    out: Callable[[str], None] = print,
    who: str | None = None,
    channel: AuditChannel = AuditChannel.CLI,
) -> list[Verdict]:
    """Hand a message back to the stage that refused it, after a fix.

    Each input a dead letter names is read again and judged by the refusing stage's own pure decision
    (the dry run: the verdict is printed first): a normalize dead letter's raw record, a pseudonymize
    dead letter's canonical record, a device door's dead-lettered payload. Unless one would be refused
    again for the same reason (``force`` overrides), each is sent again where the stage reads it, with
    its key: the workers take it like any record, and because it keeps its raw id (and so its event
    ids), any earlier partial output collapses with it. The re-drive is recorded in the audit trail
    (who, which raw id, why) before anything is sent. Doors that answered their sender (MLLP AR/AE,
    FHIR 4xx) stored nothing to re-drive: the sender resends.
    """
    if len(raw_id) < 8:
        raise ConfigError(f"raw id {raw_id!r} is too short: give at least 8 characters of it")
    located = [
        (record, letter)
        for record, letter in read_located(settings, DLQ_TOPICS, since)
        if str(letter.get("raw_id") or "").startswith(raw_id)
    ]
    if not located:
        raise ConfigError(
            f"no dead letter with raw id {raw_id} in {', '.join(DLQ_TOPICS)}"
            + (f" since {since:%Y-%m-%d %H:%M}" if since else "")
            + ": `affluent dlq list` shows what is there (or widen --since)"
        )
    full_ids = {str(letter["raw_id"]) for _, letter in located}
    if len(full_ids) > 1:
        raise ConfigError(f"raw id {raw_id} names {len(full_ids)} messages: give more of it")
    of = {t: [letter for record, letter in located if record.topic == t] for t in DLQ_TOPICS}
    devices = [
        (record, letter)
        for record, letter in located
        if record.topic == DLQ_INGEST and letter["source"]["connector"] in DEVICE_CONNECTORS
    ]
    answered = len(of[DLQ_INGEST]) - len(devices)
    if of[DLQ_COHORT] and not (of[DLQ_INGEST] or of[DLQ_NORMALIZE] or of[DLQ_PSEUDONYMIZE]):
        raise ConfigError(
            f"raw id {raw_id}: the cohort stage could not read its canonical record (dlq.cohort); "
            "fix the record's source and replay normalize (`affluent replay --stage normalize`)"
        )
    if answered and not (of[DLQ_NORMALIZE] or of[DLQ_PSEUDONYMIZE] or devices):
        raise ConfigError(
            f"raw id {raw_id} was refused at its door, which told the sender (AR/AE or 4xx) and stored "
            "nothing to re-drive: the sender must send it again once the cause is fixed"
        )
    plans: list[Plan] = []
    if of[DLQ_NORMALIZE]:
        plans += _normalize_plans(settings, of[DLQ_NORMALIZE])
    if of[DLQ_PSEUDONYMIZE]:
        plans += _pseudonymize_plans(settings, of[DLQ_PSEUDONYMIZE])
    device_plans = _ingest_plans(settings, devices) if devices else []
    for plan in plans + device_plans:
        out(plan.verdict.line())
    verdicts = [p.verdict for p in plans + device_plans]
    if dry_run:
        return verdicts
    if any(v.refused_again for v in verdicts) and not force:
        raise ConfigError(
            "not re-driven: the stage would refuse it again for the same reason; fix the mapping "
            "(or the sender's data, or the device's link) first, or re-drive anyway with --force"
        )
    [full] = full_ids
    attributes = {"why": why, "forced": "yes" if force else "no"}
    record_now(
        settings, audit_entry(AuditAction.REDRIVE, who or os_user(), channel, [full], attributes=attributes)
    )
    records = [p.record for p in plans + device_plans if p.record[1] is not None]

    async def send() -> None:
        producer = DurableProducer(settings.kafka)
        try:
            await producer.send_all(records)
        finally:
            producer.flush()

    asyncio.run(send())
    topics = sorted({topic for topic, _, _ in records})
    out(f"re-driven: {len(records)} record(s) sent again to {', '.join(topics)} (raw id {full[:16]}…)")
    return verdicts
