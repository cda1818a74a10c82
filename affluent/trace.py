"""``affluent trace``: where one message went, hop by hop, and why it stopped where it stopped.

The first question on call is "did message X arrive, and if not, where is it?". Every hop already
carries what answers it: the raw record its ``raw_id``; each canonical event its ``lineage`` (raw topic,
partition, offset, raw id); each dead letter the raw id and event id it refused; each national record
the HMAC of the canonical event id under the destination's key (so the hub, which holds the keys, can
find it and nobody else can). Trace follows those ids forward:

    raw record → canonical events → national records per destination (topic, partition, offset, the
    pseudonymized key) | dead letters (ReasonCode, location, rule, text) | not sent (policy, opposition)

with each hop's Kafka time and its delay after the previous hop.

What it costs. Kafka has no index by id, so each hop is a scan of a time range: every raw record of
the three raw topics in [``since``, ``until``), then every canonical and dead-letter record from the
first matching raw record's time, then every national record from the first event's time. Each record
is decoded (fastavro, a few µs to a few tens of µs), so a day of a hospital's traffic (≈1 M records) is
tens of seconds: ``--since`` and ``--until`` bound it (default: the last 24 hours). A facility query
filters raw records by their Kafka key before decoding them.

Raw, canonical and dead-letter topics identify patients: the read is recorded in the audit trail first
(who, which topics), and nothing is read when that record cannot be written, as for ``affluent tail``.
The output itself holds ids, times, topics, offsets, reason codes and pseudonyms only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from affluent.audit_cli import os_user
from affluent.core.errors import AffluentError, ConfigError
from affluent.core.kafka import wait_for_kafka
from affluent.core.ranges import Record, Span, read_range, read_spans
from affluent.core.settings import Settings
from affluent.core.topics import DLQ_INGEST, INGEST_DEVICE_RAW, INGEST_FHIR_RAW, INGEST_HL7V2_RAW
from schemas.audit import AuditAction, AuditChannel, audit_entry
from schemas.audit_log import record_now
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS
from schemas.registry import Registry
from schemas.registry import decode as decode_record

RAW_TOPICS = (INGEST_HL7V2_RAW, INGEST_FHIR_RAW, INGEST_DEVICE_RAW)
DEFAULT_WINDOW = timedelta(hours=24)
_HEX = re.compile(r"[0-9a-f]{8,64}")
_FHIR_REF = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")


# --- what is looked for ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One message, named the way its sender or an operator knows it.

    ``hex_id`` is a raw id or a canonical event id (both are SHA-256 hex; a device reading's id is its
    event id), or a prefix of 8 characters or more; ``facility`` + ``message_id`` is an HL7 message
    (MSH-4, MSH-10) or, with ``protocol == "fhir"``, a FHIR resource (sender, ``Type/id``).
    """

    hex_id: str | None = None
    facility: str | None = None
    message_id: str | None = None
    protocol: str | None = None

    def describe(self) -> str:
        if self.hex_id:
            return f"id {self.hex_id}"
        what = "FHIR resource" if self.protocol == "fhir" else "HL7 message"
        return f"{what} {self.message_id} from {self.facility}"

    def as_json(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("id", self.hex_id),
                ("facility", self.facility),
                ("message_id", self.message_id),
                ("protocol", self.protocol),
            )
            if v
        }


def parse_target(text: str, sender: str | None = None) -> Target:
    """What an operator typed: a raw or event id (hex, ≥ 8 characters), ``FACILITY/MSH-10`` for HL7, or
    ``Type/id`` with ``sender`` for FHIR. Anything else is a one-line ConfigError."""
    text = text.strip()
    sender = (sender or "").strip() or None
    if not text:
        raise ConfigError(
            "nothing to trace: give a raw id, an event id, FACILITY/MSH-10, or Type/id with --sender"
        )
    if sender is not None:
        if not _FHIR_REF.fullmatch(text):
            raise ConfigError(
                f"{text[:60]!r} is not a FHIR reference: with --sender, "
                "give Type/id (e.g. Observation/lab-42)"
            )
        return Target(facility=sender, message_id=text, protocol="fhir")
    if _HEX.fullmatch(text.lower()):
        return Target(hex_id=text.lower())
    if "/" in text:
        facility, message_id = text.split("/", 1)
        if facility and message_id:
            return Target(facility=facility, message_id=message_id, protocol="hl7v2")
    raise ConfigError(
        f"{text[:60]!r} names no message: give a raw id or event id (8+ hex characters), "
        "FACILITY/MSH-10 for HL7, or Type/id with --sender for FHIR"
    )


def raw_matches(target: Target, raw: Mapping[str, Any]) -> bool:
    """Whether a decoded RawMessage is the target message (for a hex id: its raw id)."""
    if target.hex_id:
        return str(raw["raw_id"]).startswith(target.hex_id)
    if str(raw["source_facility"]) != target.facility or target.message_id is None:
        return False
    message_id = str(raw.get("message_id") or "")
    if target.protocol == "fhir":
        wanted = target.message_id
        if "/_history/" in wanted:
            return message_id == wanted
        return message_id == wanted or message_id.startswith(wanted + "/_history/")
    return message_id == target.message_id or message_id.split("#", 1)[0] == target.message_id


def hl7_control_id(payload: bytes | None) -> str | None:
    """MSH-10 of a refused HL7 payload (door dead letters keep the bytes, not the parsed header)."""
    if not payload or not payload.startswith(b"MSH") or len(payload) < 8:
        return None
    first = payload.split(b"\r", 1)[0].split(b"\n", 1)[0]
    fields = first.split(payload[3:4])
    return fields[9].decode("utf-8", "replace") if len(fields) > 9 else None


def key_may_match(target: Target, key: bytes | None) -> bool:
    """A cheap filter before decoding: raw records are keyed ``facility|application``."""
    if target.facility is None or key is None:
        return True
    return key.startswith(target.facility.encode("utf-8", "replace") + b"|")


# --- what was found ----------------------------------------------------------------------------------


def _when(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


@dataclass(slots=True)
class Hop:
    """One record on the way: where it sits in Kafka and when it was written."""

    topic: str
    partition: int
    offset: int
    at: datetime | None

    @classmethod
    def of(cls, record: Record) -> Hop:
        return cls(record.topic, record.partition, record.offset, _when(record.timestamp_ms))

    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def after(self, earlier: datetime | None) -> float | None:
        return (self.at - earlier).total_seconds() if self.at and earlier else None

    def as_json(self, earlier: datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        out["time"] = self.at.isoformat() if self.at else None
        delay = self.after(earlier)
        if delay is not None:
            out["delay_s"] = round(delay, 3)
        return out


@dataclass(slots=True)
class DeadLetter:
    hop: Hop
    stage: str
    reason_code: str
    reason: str
    location: str
    rule: str
    event_id: str | None

    def line(self, earlier: datetime | None) -> str:
        where = f" at {self.location}" if self.location else ""
        rule = f" (rule {self.rule})" if self.rule else ""
        delay = _delay(self.hop, earlier)
        return f"dead letter {self.hop.where()}{delay}  {self.reason_code}{where}: {self.reason}{rule}"

    def as_json(self, earlier: datetime | None) -> dict[str, Any]:
        return {
            **self.hop.as_json(earlier),
            "stage": self.stage,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "location": self.location or None,
            "rule": self.rule or None,
        }


@dataclass(slots=True)
class National:
    hop: Hop
    destination: str
    key: str  # the patient pseudonym the record is keyed by
    national_event_id: str


@dataclass(slots=True)
class Event:
    hop: Hop
    event_id: str
    event_type: str
    kind: str
    national: list[National] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    not_sent: dict[str, str] = field(default_factory=dict)  # destination → why


@dataclass(slots=True)
class Raw:
    hop: Hop
    raw_id: str
    protocol: str
    connector: str
    facility: str
    application: str
    message_id: str
    message_type: str
    received_at: datetime | None
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def _delay(hop: Hop, earlier: datetime | None) -> str:
    delay = hop.after(earlier)
    return f"  +{delay:.3f} s" if delay is not None else ""


@dataclass(slots=True)
class Trace:
    """Everything found for a target, as a tree: raw records → events → national records."""

    target: Target
    since: datetime
    until: datetime | None
    raws: list[Raw] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)  # ingest dead letters: never stored raw
    national_looked_up: bool = True
    note: str = ""

    @property
    def arrived(self) -> bool:
        """At least one national record was found for the message."""
        return any(n for raw in self.raws for e in raw.events for n in e.national)

    def lines(self) -> list[str]:
        window = (
            f"{self.since:%Y-%m-%d %H:%M} .. {self.until:%Y-%m-%d %H:%M} UTC"
            if self.until
            else (f"since {self.since:%Y-%m-%d %H:%M} UTC")
        )
        out = [f"trace of {self.target.describe()} ({window})"]
        if not self.raws and not self.refused:
            out.append("  nothing found: check the id, or widen --since")
        for letter in self.refused:
            out.append("  refused at the door, nothing stored:")
            out.append(f"  └ {letter.line(None)}")
        for raw in self.raws:
            out.append(
                f"raw {raw.hop.where()}  {_stamp(raw.hop.at)}  {raw.protocol} {raw.message_type or '-'} "
                f"{_id(raw.message_id)} from {raw.facility}/{raw.application} ({raw.connector})  "
                f"raw id {raw.raw_id[:16]}…"
            )
            children: list[tuple[str, list[str]]] = []
            for event in raw.events:
                head = (
                    f"{event.hop.where()}{_delay(event.hop, raw.hop.at)}  {event.event_type}  "
                    f"event {event.event_id[:16]}…"
                )
                subs = [
                    f"{n.destination}: {n.hop.where()}{_delay(n.hop, event.hop.at)}  key {_short(n.key)}  "
                    f"national event {n.national_event_id[:16]}…"
                    for n in event.national
                ]
                subs += [d.line(event.hop.at) for d in event.dead]
                subs += [f"{dest}: not sent, {why}" for dest, why in sorted(event.not_sent.items())]
                children.append((head, subs))
            children += [(d.line(raw.hop.at), []) for d in raw.dead]
            if not children:
                children.append(
                    ("no canonical event and no dead letter yet: is the normalize stage running?", [])
                )
            for n, (head, subs) in enumerate(children):
                last = n == len(children) - 1
                out.append(f" {'└' if last else '├'} {head}")
                for m, sub in enumerate(subs):
                    out.append(f" {' ' if last else '│'}   {'└' if m == len(subs) - 1 else '├'} {sub}")
        if self.note:
            out.append(self.note)
        out.append("arrived: yes" if self.arrived else "arrived: no national record found")
        return out

    def to_json(self) -> dict[str, Any]:
        def event_json(event: Event, raw_at: datetime | None) -> dict[str, Any]:
            return {
                **event.hop.as_json(raw_at),
                "event_id": event.event_id,
                "event_type": event.event_type,
                "national": [
                    {
                        **n.hop.as_json(event.hop.at),
                        "destination": n.destination,
                        "key": n.key,
                        "national_event_id": n.national_event_id,
                    }
                    for n in event.national
                ],
                "dead_letters": [d.as_json(event.hop.at) for d in event.dead],
                "not_sent": event.not_sent,
            }

        return {
            "target": self.target.as_json(),
            "since": self.since.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "arrived": self.arrived,
            "national_looked_up": self.national_looked_up,
            "refused_at_door": [d.as_json(None) for d in self.refused],
            "raw": [
                {
                    **raw.hop.as_json(),
                    "raw_id": raw.raw_id,
                    "protocol": raw.protocol,
                    "connector": raw.connector,
                    "facility": raw.facility,
                    "application": raw.application,
                    "message_id": raw.message_id,
                    "message_type": raw.message_type,
                    "received_at": raw.received_at.isoformat() if raw.received_at else None,
                    "events": [event_json(e, raw.hop.at) for e in raw.events],
                    "dead_letters": [d.as_json(raw.hop.at) for d in raw.dead],
                }
                for raw in self.raws
            ],
        }


def _id(message_id: str) -> str:
    """The sender's id as sent; a payload hash (devices: no id of their own) cut to 16 characters."""
    if len(message_id) == 64 and all(c in "0123456789abcdef" for c in message_id):
        return f"payload {message_id[:16]}…"
    return message_id or "-"


def _short(pseudonym: str) -> str:
    """``<key id>:<first 12 of the pseudonym>…``: enough to tell patients apart on a screen."""
    key_id, _, value = pseudonym.rpartition(":")
    return f"{key_id}:{value[:12]}…" if key_id else f"{value[:12]}…"


def _stamp(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC" if at else "-"


def dead_letter_of(record: Record, letter: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(
        Hop.of(record),
        str(letter["stage"]),
        str(letter["reason_code"]),
        str(letter["reason"]),
        str(letter.get("location") or ""),
        str(letter.get("rule") or ""),
        str(letter["event_id"]) if letter.get("event_id") else None,
    )


# --- reading Kafka -----------------------------------------------------------------------------------


Decoder = Callable[[bytes], dict[str, Any]]


def _decoded(records: Iterable[Record], decode: Decoder) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Records that decode; a record that does not (not ours, another format) is skipped, not fatal."""
    for record in records:
        if record.value is None:
            continue
        try:
            yield record, decode(record.value)
        except AffluentError:
            continue


def _earliest(hops: Iterable[Hop], fallback: datetime) -> datetime:
    times = [h.at for h in hops if h.at is not None]
    return min(times) - timedelta(seconds=1) if times else fallback


class _NationalFinder:
    """National event ids of canonical events under every kept key of every destination.

    Each destination's records carry ``HMAC(destination key, canonical event id)``; with every key the
    destination has had (rotation keeps the older ones) the hub can recompute them. Without keys (trace
    run where the pseudonymize worker's keys are not), national records cannot be recognised at all.
    """

    def __init__(self) -> None:
        from streams.pseudonymize.keys import KeyProvider
        from streams.pseudonymize.worker import build_feeds, load_keys

        self.keys: KeyProvider = load_keys()
        self.feeds = build_feeds(self.keys)

    def ids(self, event_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """national event id → (destination, canonical event id)."""
        from streams.pseudonymize.pseudonym import national_event_id

        out: dict[str, tuple[str, str]] = {}
        for feed in self.feeds:
            for key in self.keys.all(feed.policy.key_name):
                for event_id in event_ids:
                    out[national_event_id(key, event_id)] = (feed.destination, event_id)
        return out

    def not_sent(
        self, kind: str, record: Mapping[str, Any], opposed: bool, scoped: frozenset[str]
    ) -> dict[str, str]:
        """Why each destination would not get this event, by the stage's own rules (dry run)."""
        why: dict[str, str] = {}
        for feed in self.feeds:
            policy = feed.policy
            if not policy.sends(kind):
                why[feed.destination] = f"its policy takes no {kind}"
            elif policy.select and not policy.selects(kind, record):
                why[feed.destination] = "not selected by its policy"
            elif opposed:
                why[feed.destination] = "withheld: the patient objects (opposition)"
            elif feed.destination in scoped:
                why[feed.destination] = (
                    "held by the cohort stage: the patient is in none of its cohorts yet "
                    "(or the cohort stage is not running)"
                )
        return why


def _opposition_of(settings: Settings, finder: _NationalFinder) -> Callable[[str, Mapping[str, Any]], bool]:
    """Whether opposition withholds a canonical record, read from control.opposition as it is now."""
    from affluent.core.compacted import CompactedView
    from affluent.core.topics import CONTROL_OPPOSITION
    from streams.pseudonymize.opposition import withheld
    from streams.pseudonymize.pseudonym import IdentityMissing

    view = CompactedView(settings.kafka, CONTROL_OPPOSITION, name="trace-opposition")
    view.start(timeout_s=30)
    view.stop()

    def opposed(kind: str, record: Mapping[str, Any]) -> bool:
        try:
            return withheld(kind, record, view, finder.keys)
        except IdentityMissing:
            return False

    return opposed


def trace(
    settings: Settings,
    target: Target,
    since: datetime | None = None,
    until: datetime | None = None,
    who: str | None = None,
    channel: AuditChannel = AuditChannel.CLI,
    wait_s: float = 10.0,
) -> Trace:
    """Follow one message through every hop within [since, until) (since: 24 hours ago by default)."""
    now = datetime.now(UTC)
    since = since or now - DEFAULT_WINDOW
    if until is not None and until <= since:
        raise ConfigError("--until must be later than --since")
    wait_for_kafka(settings.kafka, timeout_s=wait_s)
    identified = [*RAW_TOPICS, *CANONICAL_TOPICS, DLQ_INGEST, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE]
    record_now(settings, audit_entry(AuditAction.TOPIC_READ, who or os_user(), channel, identified))
    registry = Registry(settings.registry)

    def decode(value: bytes) -> dict[str, Any]:
        return decode_record(registry, value)

    result = Trace(target, since, until)
    k = settings.kafka

    # 1. the raw records (or, for a hex id that is no raw id, the canonical event it names)
    raws: dict[str, Raw] = {}
    scanned = (r for r in read_range(k, RAW_TOPICS, since, until, wait_s) if key_may_match(target, r.key))
    for record, found in _decoded(scanned, decode):
        if raw_matches(target, found) and "payload" in found:
            raws.setdefault(str(found["raw_id"]), _raw_of(record, found))
    seed_events: list[tuple[Record, dict[str, Any]]] = []
    if not raws and target.hex_id:
        for record, seed in _decoded(read_range(k, CANONICAL_TOPICS, since, until, wait_s), decode):
            if str(seed["envelope"]["event_id"]).startswith(target.hex_id):
                seed_events.append((record, seed))
        for _, seed in seed_events:
            lineage = seed["envelope"].get("lineage") or {}
            if lineage.get("topic") in RAW_TOPICS:
                span = Span(
                    lineage["topic"],
                    int(lineage["partition"]),
                    int(lineage["offset"]),
                    int(lineage["offset"]) + 1,
                )
                for record, found in _decoded(read_spans(k, [span], wait_s), decode):
                    raws.setdefault(str(found["raw_id"]), _raw_of(record, found))
    result.raws = sorted(raws.values(), key=lambda r: (r.hop.at or now, r.hop.offset))

    # 2. door refusals (never stored as raw records) and the events and dead letters of the raw records
    if target.hex_id or target.facility:
        for record, letter in _decoded(read_range(k, [DLQ_INGEST], since, until, wait_s), decode):
            source = letter.get("source") or {}
            by_id = target.hex_id and str(letter.get("raw_id") or "").startswith(target.hex_id)
            if by_id and str(letter.get("raw_id")) in raws:
                raws[str(letter["raw_id"])].dead.append(dead_letter_of(record, letter))
            elif by_id or (
                target.protocol == "hl7v2"
                and source.get("facility") == target.facility
                and hl7_control_id(letter.get("raw_payload")) == target.message_id
            ):
                result.refused.append(dead_letter_of(record, letter))
    if not raws:
        return result
    start = _earliest((r.hop for r in raws.values()), since)
    events: dict[str, tuple[Event, dict[str, Any], Raw]] = {}
    letters: list[tuple[Raw, DeadLetter]] = []
    topics = [*CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE]
    for record, value in _decoded(read_range(k, topics, start, until, wait_s), decode):
        if record.topic in (DLQ_NORMALIZE, DLQ_PSEUDONYMIZE):
            raw = raws.get(str(value.get("raw_id") or ""))
            if raw is None:
                continue
            letters.append((raw, dead_letter_of(record, value)))
            continue
        envelope = value.get("envelope") or {}
        raw = raws.get(str((envelope.get("lineage") or {}).get("raw_id") or ""))
        if raw is None:
            continue
        event_id = str(envelope["event_id"])
        if event_id in events:  # a replay or a re-drive wrote it again: the first copy is the hop
            continue
        kind = record.topic.removeprefix("canonical.")
        event = Event(Hop.of(record), event_id, str(envelope.get("event_type") or kind), kind)
        events[event_id] = (event, value, raw)
        raw.events.append(event)

    for raw, dead in letters:  # a dead letter of an event belongs to it, whichever was read first
        owner = events.get(dead.event_id or "")
        (owner[0].dead if owner else raw.dead).append(dead)

    # 3. national records, recognised by the HMAC of their canonical event id under each kept key
    if not events:
        return result
    try:
        finder = _NationalFinder()
    except ConfigError:
        result.national_looked_up = False
        result.note = (
            "national records not looked up: no pseudonymization keys here "
            "(run trace where the pseudonymize worker's keys are: AFFLUENT_PSEUDO_KEY_FILE)"
        )
        return result
    wanted = finder.ids(events)
    start = _earliest((e.hop for e, _, _ in events.values()), since)
    national_topics = list(NATIONAL_TOPICS)
    seen: set[tuple[str, str]] = set()
    for record, value in _decoded(read_range(k, national_topics, start, until, wait_s), decode):
        national_id = str((value.get("envelope") or {}).get("event_id") or "")
        hit = wanted.get(national_id)
        if hit is None or (hit[0], national_id) in seen:
            continue
        seen.add((hit[0], national_id))
        destination, event_id = hit
        key = (record.key or b"").decode("utf-8", "replace")
        events[event_id][0].national.append(National(Hop.of(record), destination, key, national_id))
    opposed = _opposition_of(settings, finder)
    from streams.pseudonymize.worker import cohort_scoped

    scoped = cohort_scoped(settings)
    for event, value, _ in events.values():
        if event.dead:
            continue
        reached = {n.destination for n in event.national}
        why = finder.not_sent(event.kind, value, opposed(event.kind, value), scoped)
        for feed in finder.feeds:
            if feed.destination not in reached:
                event.not_sent[feed.destination] = why.get(
                    feed.destination, "not found yet (in flight, or the pseudonymize stage is stopped)"
                )
    return result


def _raw_of(record: Record, raw: Mapping[str, Any]) -> Raw:
    received = raw.get("received_at")
    return Raw(
        Hop.of(record),
        str(raw["raw_id"]),
        str(raw.get("protocol") or ""),
        str(raw.get("connector") or ""),
        str(raw.get("source_facility") or ""),
        str(raw.get("source_application") or ""),
        str(raw.get("message_id") or ""),
        str(raw.get("message_type") or ""),
        received if isinstance(received, datetime) else None,
    )


def trace_cmd(
    settings: Settings,
    target: Target,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
    out: Callable[[str], None] = print,
) -> Trace:
    import json

    result = trace(settings, target, since, until)
    if as_json:
        out(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        for line in result.lines():
            out(line)
    return result


__all__: Sequence[str] = ("Target", "Trace", "parse_target", "trace", "trace_cmd")
