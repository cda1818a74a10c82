"""``affluent simulate``: a synthetic hospital sending realistic traffic to the doors, with its accounting.

The hospital admits, transfers, updates, discharges and merges synthetic patients (ADT A01, A02, A08,
A03, A40) and reports their lab results (ORU^R01), at a given rate for a given time, over several MLLP
connections (one lane per patient, so a patient's messages keep their order). A share of patients
object to the secondary use of their data (registered through the opposition registry before their
first message), and a small share of messages is malformed the way real interfaces get it wrong.

While it sends, a :class:`~affluent.sim.accounting.Ledger` follows the run through the pipeline; at the end
the accounting must balance: every message a sender saw acknowledged is in a canonical topic (and its
national records arrived, or were counted as opposition drops) or in a dead-letter topic.

Traffic goes over :class:`~affluent.sim.types.Channel` s, each message carrying the raw id its door will
give it: HL7 v2 over MLLP (here), FHIR R4 over HTTP (:mod:`affluent.sim.fhir`), telemonitoring readings
over HTTP(S) JSON and MQTT (:mod:`affluent.sim.devices`) — all about the same synthetic patients, and
accounted for per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from affluent.core.errors import Unavailable
from affluent.core.settings import Settings
from affluent.sim import devices as sim_devices
from affluent.sim import fhir as sim_fhir
from affluent.sim.accounting import Ledger, Tally
from affluent.sim.devices import DeviceTarget
from affluent.sim.fhir import FhirTarget
from affluent.sim.synthetic import (
    CANCERS,
    HOSPITAL_OID,
    MALFORMED,
    OTHER_DIAGNOSES,
    SyntheticPatient,
    adt,
    cohort,
    malformed,
    oru_r01,
)
from affluent.sim.types import Answer, Channel, Outbound

Out = Callable[[str], None]
Progress = Callable[[Tally, float], None]

# Of the messages about an admitted patient: what happens next (weights); the rest are lab results.
_NEXT = (("ORU", 60), ("A02", 10), ("A08", 8), ("A03", 14), ("A40", 2), ("DG1", 6))
# Share of patients whose coded diagnoses include a cancer (INCa's cohorts take them, and their history).
CANCER_SHARE = 0.2
# Share of the traffic each channel carries when it is on (the rest of the hospital stays on HL7 v2).
_SHARE = {"mllp": 40, sim_fhir.CHANNEL: 30, sim_devices.HTTP: 15, sim_devices.MQTT: 15}


@dataclass(frozen=True, slots=True)
class Plan:
    patients: int = 200
    rate: float = 50.0  # messages per second, all senders together
    duration_s: float = 60.0
    senders: int = 4
    host: str = "127.0.0.1"
    port: int = 2575
    seed: int | None = None
    objecting_share: float = 0.05
    malformed_share: float = 0.02
    settle_s: float = 90.0  # after the last message: how long the pipeline may take to account for all
    fhir: FhirTarget | None = None  # the FHIR channel, when on
    devices: DeviceTarget | None = None  # the device channels (HTTP and/or MQTT), when on

    @property
    def count(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    def channels(self) -> list[str]:
        """The channels on, in accounting order; ``rate`` is shared between them."""
        return (
            ["mllp"]
            + ([sim_fhir.CHANNEL] if self.fhir else [])
            + (self.devices.channels() if self.devices else [])
        )


@dataclass(slots=True)
class Hospital:
    """The synthetic hospital's state: who is admitted where, and which records got merged."""

    rng: random.Random
    people: list[SyntheticPatient]
    run: str
    admitted: dict[int, str] = field(default_factory=dict)  # patient index -> visit number
    sent: int = 0

    def next_message(self, plan: Plan, when: datetime) -> Outbound:
        index = self.rng.randrange(len(self.people))
        p = self.people[index]
        control_id = f"S{self.run}{self.sent:07d}"
        self.sent += 1
        lane = index % plan.senders
        if self.rng.random() < plan.malformed_share:
            kind = self.rng.choice(MALFORMED)
            payload = malformed(kind, p, control_id, when, self.admitted.get(index, f"V{p.ipp}"))
            return _outbound(lane, payload, f"malformed:{kind}")
        visit = self.admitted.get(index)
        if visit is None:
            visit = self.admitted[index] = f"V{p.ipp}{self.sent:06d}"
            return _outbound(lane, adt(p, "A01", control_id, when, visit), "ADT^A01")
        kind = self.rng.choices([k for k, _ in _NEXT], [w for _, w in _NEXT])[0]
        if kind == "ORU":
            return _outbound(lane, oru_r01(self.rng, p, control_id, when, visit), "ORU^R01")
        if kind == "DG1":  # the stay's coded diagnosis, sent as an update (A08) with a DG1
            cancer = index % round(1 / CANCER_SHARE) == 0
            code = self.rng.choice(CANCERS if cancer else OTHER_DIAGNOSES)
            return _outbound(lane, adt(p, "A08", control_id, when, visit, diagnosis=code), "ADT^A08")
        if kind == "A03":
            del self.admitted[index]
        retired = f"{p.ipp}D" if kind == "A40" else ""  # a duplicate record made at the front desk
        return _outbound(lane, adt(p, kind, control_id, when, visit, retired), f"ADT^{kind}")

    def other_message(
        self, channel: str, plan: Plan, when: datetime, templates: Mapping[str, Any]
    ) -> Outbound:
        """A FHIR request or a device message about a random patient (clinical time ``when``, UTC)."""
        index = self.rng.randrange(len(self.people))
        p = self.people[index]
        name = f"{self.run}-{self.sent:07d}"
        self.sent += 1
        clinical = when.replace(tzinfo=UTC)
        broken = self.rng.random() < plan.malformed_share
        if channel == sim_fhir.CHANNEL and plan.fhir is not None:
            kind = self.rng.choice(sim_fhir.MALFORMED) if broken else None
            message = sim_fhir.fhir_message(self.rng, p, name, clinical, kind)
            return sim_fhir.fhir_outbound(message, index % plan.fhir.lanes, plan.fhir.sender)
        assert plan.devices is not None
        kind = self.rng.choice(sim_devices.MALFORMED) if broken else None
        return sim_devices.device_outbound(
            channel, self.rng, self.run, index, p, clinical, plan.devices, templates, kind
        )


def _outbound(lane: int, payload: bytes, label: str) -> Outbound:
    from connectors.mllp.intake import Accepted, IntakePolicy, assess

    outcome = assess(payload, IntakePolicy())
    raw_id = outcome.raw_id if isinstance(outcome, Accepted) else None
    return Outbound("mllp", lane, payload, raw_id, label)


def run_tag(seed: int) -> str:
    """The run's tag (in control ids, resource ids, device ids): the first draw of the seed's generator."""
    return f"{random.Random(seed).randrange(16**6):06x}"


def traffic(
    plan: Plan,
    people: list[SyntheticPatient],
    seed: int,
    start: datetime | None = None,
    templates: Mapping[str, Any] | None = None,
) -> list[Outbound]:
    """The whole run's messages, in sending order (pure given `start`: same plan and seed, same bytes).
    ``templates``: the device door's mapping templates (default: the shipped ones)."""
    rng = random.Random(seed)
    hospital = Hospital(rng, people, f"{rng.randrange(16**6):06x}")  # the run_tag(seed)
    when = start or datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    step = timedelta(seconds=1 / plan.rate)
    channels = plan.channels()
    shares = [_SHARE[c] for c in channels]
    if plan.devices is not None and templates is None:
        from formats.devices.templates import load_templates

        templates = load_templates(None)
    out = []
    for _ in range(plan.count):
        when += step
        channel = rng.choices(channels, shares)[0] if len(channels) > 1 else "mllp"
        if channel == "mllp":
            out.append(hospital.next_message(plan, when))
        else:
            out.append(hospital.other_message(channel, plan, when, templates or {}))
    return out


class MllpChannel:
    """HL7 v2 over MLLP: one connection, one message in flight (stop-and-wait)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    async def open(cls, host: str, port: int) -> MllpChannel:
        from connectors.mllp.client import MllpClient

        return cls(await MllpClient.connect(host, port))

    async def send(self, message: Outbound) -> Answer:
        from connectors.mllp.client import ack_code

        (reply,) = await self.client.request(message.payload)
        code = ack_code(reply)[0]
        return Answer(code, code in ("AA", "CA"))

    async def close(self) -> None:
        await self.client.close()


async def send_paced(
    plan: Plan, messages: Sequence[Outbound], channels: Mapping[tuple[str, int], Channel], ledger: Ledger
) -> float:
    """Send every message on its lane — (channel, lane) — at its place in the schedule (message n at
    n / rate seconds); a lane that falls behind sends at once, without bursting to catch up. Returns the
    seconds taken."""
    begin = time.monotonic()

    async def lane(key: tuple[str, int]) -> None:
        channel = channels[key]
        for n, message in enumerate(messages):
            if (message.channel, message.lane) != key:
                continue
            delay = begin + n / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            ledger.sent(message.raw_id, message.channel)
            answer = await channel.send(message)
            ledger.answered(message.raw_id, answer.code, answer.acknowledged, message.channel)

    await asyncio.gather(*(lane(key) for key in channels))
    return time.monotonic() - begin


async def open_channels(plan: Plan) -> dict[tuple[str, int], Channel]:
    """One connection per lane of every channel that is on."""
    channels: dict[tuple[str, int], Channel] = {}
    for n in range(plan.senders):
        channels["mllp", n] = await MllpChannel.open(plan.host, plan.port)
    if plan.fhir is not None:
        for n in range(plan.fhir.lanes):
            channels[sim_fhir.CHANNEL, n] = await sim_fhir.FhirChannel.open(plan.fhir)
    if plan.devices is not None and plan.devices.http_url:
        for n in range(plan.devices.http_lanes):
            channels[sim_devices.HTTP, n] = await sim_devices.DeviceHttpChannel.open(plan.devices)
    if plan.devices is not None and plan.devices.mqtt_port:
        channels[sim_devices.MQTT, 0] = await sim_devices.DeviceMqttChannel.open(plan.devices)
    return channels


def targets(plan: Plan) -> list[tuple[str, str, int, str]]:
    """(what, host, port, what to do) of every door or broker the plan sends to."""
    from urllib.parse import urlsplit

    found = [("MLLP door", plan.host, plan.port, "start it (affluent run) or give --host/--port")]
    for what, url, hint in (
        ("FHIR door", plan.fhir.base_url if plan.fhir else None, "start it (affluent run) or fix --fhir-url"),
        (
            "device door",
            plan.devices.http_url if plan.devices else None,
            "start it (affluent run) or fix --devices-url",
        ),
    ):
        if url:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found.append((what, parts.hostname or "", port, hint))
    if plan.devices is not None and plan.devices.mqtt_port:
        found.append(
            (
                "MQTT broker",
                plan.devices.mqtt_host,
                plan.devices.mqtt_port,
                "start it or fix --mqtt-host/--mqtt-port",
            )
        )
    return found


async def check_targets(plan: Plan, timeout_s: float = 5.0) -> None:
    """Every door (and broker) of the plan accepts a connection, before anything is registered or sent:
    a door that is not there is one sentence, not a traceback half-way through the run."""
    for what, host, port, hint in targets(plan):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"no {what} answers at {host}:{port} ({type(exc).__name__}): {hint}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class NationalOf:
    """What the pseudonymize stage must do with one canonical record, computed with the same policies,
    keys, opposition registry and cohort rules: (destination, national event id, dropped by opposition)
    per feed. A cohort-scoped destination (INCa) gets a record only once its patient is in one of its
    cohorts, and then the held history too: the cohort stage's own decision, tracked per patient here
    (:class:`streams.cohort.expect.CohortTracker`); what it still holds is :meth:`held`."""

    def __init__(self, keys: Any, opposition: Any, cohorts_dir: Any = None) -> None:
        from streams.cohort.definition import load_cohorts
        from streams.cohort.expect import CohortTracker
        from streams.pseudonymize.worker import DESTINATIONS, build_feeds

        self.keys, self.opposition = keys, opposition
        self.feeds = build_feeds(keys)
        self.tracker = CohortTracker(load_cohorts(DESTINATIONS, cohorts_dir))
        self.scoped = self.tracker.scoped

    def _apply(self, feed: Any, kind: str, record: dict[str, Any]) -> tuple[str, str, bool] | None:
        from streams.pseudonymize.opposition import withheld
        from streams.pseudonymize.transform import TransformError

        try:
            national = feed.apply(kind, record)
        except TransformError:
            return None  # the stage dead-letters it: found through dlq.pseudonymize
        if national is None:
            return None
        opposed = withheld(kind, record, self.opposition, self.keys)
        return (feed.destination, str(national.record["envelope"]["event_id"]), opposed)

    def __call__(self, kind: str, record: dict[str, Any]) -> list[tuple[str, str, bool]]:
        out = []
        for feed in self.feeds:
            if feed.destination not in self.scoped:
                outcome = self._apply(feed, kind, record)
                if outcome is not None:
                    out.append(outcome)
        by_destination = {f.destination: f for f in self.feeds}
        for destination, forwarded_kind, forwarded in self.tracker.see(kind, record):
            outcome = self._apply(by_destination[destination], forwarded_kind, forwarded)
            if outcome is not None:
                out.append(outcome)
        return out

    def held(self) -> dict[str, int]:
        return self.tracker.held()


def national_of(keys: Any, opposition: Any, cohorts_dir: Any = None) -> NationalOf:
    return NationalOf(keys, opposition, cohorts_dir)


@dataclass(frozen=True, slots=True)
class Accounts:
    """A run's final accounting: the whole, and each channel's own."""

    total: Tally
    channels: dict[str, Tally]


def _describe(plan: Plan) -> str:
    parts = [f"HL7 v2 over {plan.senders} MLLP connections to {plan.host}:{plan.port}"]
    if plan.fhir is not None:
        parts.append(f"FHIR R4 resources and transaction Bundles to {plan.fhir.base_url}")
    if plan.devices is not None and plan.devices.http_url:
        parts.append(f"blood-pressure readings (JSON) to {plan.devices.http_url}/devices/bp-single")
    if plan.devices is not None and plan.devices.mqtt_port:
        parts.append(
            f"gateway batches over MQTT to {plan.devices.mqtt_host}:{plan.devices.mqtt_port} "
            f"({plan.devices.topic_filter})"
        )
    return "; ".join(parts)


async def simulate(settings: Settings, plan: Plan, out: Out, progress: Progress | None = None) -> Accounts:
    """Register the objecting patients (and link their devices), send the traffic, wait for the
    pipeline; the final accounting."""
    from affluent.core.compacted import CompactedView
    from affluent.core.kafka import wait_for_kafka
    from affluent.core.topics import CONTROL_OPPOSITION, DLQ_INGEST
    from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS
    from schemas.registry import Registry
    from streams.pseudonymize.cli import opposition_add
    from streams.pseudonymize.worker import load_keys

    seed = plan.seed if plan.seed is not None else int(time.time())
    keys = load_keys()
    await check_targets(plan)
    await asyncio.to_thread(wait_for_kafka, settings.kafka, 30)
    rng = random.Random(seed)
    people = cohort(seed, plan.patients, ipp_base=rng.randrange(10_000_000, 90_000_000))
    objecting = people[: max(1, round(plan.patients * plan.objecting_share))]
    for person in objecting:
        await asyncio.to_thread(opposition_add, settings, ipp=person.ipp, authority=HOSPITAL_OID, keys=keys)
    start = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    templates: dict[str, Any] = {}
    if plan.devices is not None:
        from affluent.devices_cli import link_all
        from formats.devices.templates import load_templates

        templates = dict(load_templates(settings.devices.templates_dir))
        links = sim_devices.device_links(run_tag(seed), people, sim_devices.since(start.replace(tzinfo=UTC)))
        await asyncio.to_thread(link_all, settings, links)
    opposition = CompactedView(settings.kafka, CONTROL_OPPOSITION, name="simulate-opposition")
    await asyncio.to_thread(opposition.start)
    devices = f", {2 * plan.patients} devices linked" if plan.devices is not None else ""
    out(
        f"Hospital: {plan.patients} synthetic patients, {len(objecting)} of whom object (registered in "
        f"{CONTROL_OPPOSITION}){devices}; {plan.count} messages at {plan.rate:g}/s: {_describe(plan)}"
    )
    messages = traffic(plan, people, seed, start, templates)
    ledger = Ledger(
        settings.kafka,
        Registry(settings.registry),
        CANONICAL_TOPICS,
        (DLQ_INGEST, DLQ_NORMALIZE, DLQ_PSEUDONYMIZE),
        NATIONAL_TOPICS,
        national_of(keys, opposition, settings.streams.cohorts_dir),
    )
    ledger.start()
    began = time.monotonic()
    channels = await open_channels(plan)
    ticker = asyncio.create_task(_tick(ledger, began, progress))
    try:
        # The workers tail the opposition and device registries; give them a moment to see the entries.
        await asyncio.sleep(1.0)
        await send_paced(plan, messages, channels, ledger)
        deadline = time.monotonic() + plan.settle_s
        while time.monotonic() < deadline:
            tally = ledger.tally()
            if tally.complete and time.monotonic() - ledger.last_change > 3.0:
                break
            await asyncio.sleep(0.5)
    finally:
        ticker.cancel()
        for channel in channels.values():
            await channel.close()
        await asyncio.to_thread(ledger.stop)
        opposition.stop()
    tally = ledger.tally()
    if progress is not None:
        progress(tally, time.monotonic() - began)
    tallies = ledger.tallies()
    return Accounts(tally, {c: tallies[c] for c in plan.channels() if c in tallies})


async def _tick(ledger: Ledger, began: float, progress: Progress | None) -> None:
    while progress is not None:
        progress(ledger.tally(), time.monotonic() - began)
        await asyncio.sleep(1.0)


def progress_line(tally: Tally, elapsed: float) -> str:
    return (
        f"{elapsed:6.1f} s  sent {tally.sent:>6}  acknowledged {tally.acknowledged:>6}  "
        f"national {tally.national_records:>6}/{tally.expected_national:<6}  "
        f"dead-lettered {tally.dead_lettered:>4}  opposition drops {sum(tally.drops.values()):>4}"
    )


def live_progress(out: Out, tty: bool) -> Progress:
    """On a terminal, one line rewritten in place; elsewhere (logs, CI), a line every 5 s."""
    last = [-10.0]

    def show(tally: Tally, elapsed: float) -> None:
        if tty:
            sys.stdout.write("\r" + progress_line(tally, elapsed))
            sys.stdout.flush()
        elif elapsed - last[0] >= 5.0:
            last[0] = elapsed
            out("  " + progress_line(tally, elapsed))

    return show


def accounting_lines(tally: Tally) -> list[str]:
    refused = sum(tally.refused.values())
    rows = [
        ("sent", tally.sent, ""),
        ("acknowledged by the door", tally.acknowledged, ""),
        ("refused by the door (never acknowledged)", refused, dict(tally.refused) if refused else ""),
    ]
    rows += [(topic, n, "events") for topic, n in sorted(tally.canonical.items())]
    rows += [(f"{key.split()[0]}", n, key.split()[1]) for key, n in sorted(tally.dead.items())]
    rows += [("acknowledged but found nowhere", tally.missing_messages, "")]
    rows += [(topic, n, "records") for topic, n in sorted(tally.national.items())]
    rows += [(f"opposition drops, {d}", n, "(counted, not sent)") for d, n in sorted(tally.drops.items())]
    rows += [(f"in no cohort of {d}", n, "(held, not sent)") for d, n in sorted(tally.held.items())]
    rows += [("national records expected but missing", tally.missing_national, "")]
    return ["Accounting"] + [f"  {what:<44}{n:>8} {note}".rstrip() for what, n, note in rows]


def channel_lines(channels: Mapping[str, Tally]) -> list[str]:
    """One line per channel: where its messages went (refused = 4xx/NAK from the door, never stored)."""
    head = ("channel", "sent", "acked", "refused", "canonical", "dead", "national", "drops", "missing")
    rows = [head] + [
        (
            name,
            *(
                str(n)
                for n in (
                    t.sent,
                    t.acknowledged,
                    sum(t.refused.values()),
                    sum(t.canonical.values()),
                    t.dead_lettered,
                    t.national_records,
                    sum(t.drops.values()),
                    t.missing_messages + t.missing_national,
                )
            ),
        )
        for name, t in channels.items()
    ]
    lines = ["Per channel (events and records; missing = acknowledged found nowhere + national missing)"]
    return lines + ["  " + f"{r[0]:<14}" + "".join(f"{c:>10}" for c in r[1:]) for r in rows]


def report_lines(accounts: Accounts) -> list[str]:
    return [*accounting_lines(accounts.total), "", *channel_lines(accounts.channels)]


async def simulate_cli(settings: Settings, plan: Plan, out: Out) -> int:
    """Simulate with the live progress view, print the accounting; 1 when anything is missing."""
    tty = sys.stdout.isatty()
    accounts = await simulate(settings, plan, out=out, progress=live_progress(out, tty))
    if tty:
        out("")
    for line in report_lines(accounts):
        out(line)
    return 0 if accounts.total.complete else 1
