"""End-to-end FHIR and device suite: HTTP in, national topics out, with everything on this box.

``affluent run`` (MLLP, FHIR and device doors, normalize and pseudonymize workers, each its own process)
runs against the local broker and registry with bearer tokens of this run; a spawned client process
posts to the doors; this process consumes the national ``hdh`` topics and stamps each record of the run
on arrival (:class:`bench.e2e.NationalWatcher`, filtered by the run's own sender).

* Latency, paced: FHIR Observations at :data:`PACED_RATE` resources/s in batch Bundles of
  :data:`FHIR_BATCH` (each entry its own raw record) over :data:`CLIENTS` clients; device readings at
  :data:`PACED_RATE` readings/s in ``gateway-batch`` bodies of :data:`PACED_BATCH`. Latency = arrival
  in this consumer − ``envelope.ingest_time`` (the door's reception), for what the door received in the
  measured window.
* Throughput, flat out: acknowledged resources (readings) over the time from the first send until the
  last of their national records arrived (all of them, or nothing new for :data:`PATIENCE_S` s).
* Ceilings in the same run: the same flat-out load against the door alone (the door in this process
  writing to a scratch raw topic, no workers) — what the bench/fhir_rest and bench/devices suites call
  the door's rate — so the end-to-end figure is also a ratio of what the door can take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from affluent.core.auth import token_digest
from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.settings import DeviceSettings, DeviceToken, FhirRestSettings, Settings, load_settings
from affluent.core.topics import ACK_CACHE_CONFIG
from bench import Options, register
from bench.e2e import NationalWatcher
from bench.loadproc import LoadProcess
from bench.mllp import delete_topics
from bench.pipeline import Pipeline, running_pipeline
from bench.report import SuiteResult, Table, fmt_count, fmt_ms, fmt_rate, fmt_ratio, percentile
from schemas.registry import Registry

PACED_RATE = 1_000  # resources/s (FHIR) and readings/s (devices)
CLIENTS = 16  # FHIR clients, each waiting for its answer
FHIR_BATCH = 10  # Observations per batch Bundle
PACED_BATCH = 50  # device readings per body in the paced run
FLAT_BATCH = 100  # device readings per body flat out
POSTERS = 8  # device posters
TOKEN = "bench-e2e-token-not-a-secret"
PATIENCE_S = 30.0  # no new national record for this long: the rest is not coming


# ---------------------------------------------------------------------------- load (spawned process)
@dataclass(frozen=True, slots=True)
class PostSpec:
    url: str
    content_type: str
    clients: int
    warmup_s: float
    duration_s: float
    bodies: list[bytes]  # ``__ID__`` is replaced by an id unique to each request
    per_body: int  # resources or readings in one body
    rate: float | None = None  # requests/s in total; None = flat out
    once: bool = False  # stop when every body was sent once (bodies without ``__ID__``: no resends)


@dataclass(slots=True)
class PostResult:
    statuses: dict[int, int] = field(default_factory=dict)
    acked: int = 0  # resources/readings acknowledged (2xx), warm-up included
    window_acked: int = 0
    window_s: float = 0.0


async def _client(index: int, session: object, spec: PostSpec, begin: float, out: PostResult) -> None:
    window_start, window_end = begin + spec.warmup_s, begin + spec.warmup_s + spec.duration_s
    interval = spec.clients / spec.rate if spec.rate else 0.0
    scheduled = begin + index * interval / spec.clients
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": spec.content_type}
    prefix, count = uuid.uuid4().hex[:8], index
    while True:
        if interval:
            if scheduled >= window_end:
                return
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            scheduled += interval
        elif time.perf_counter() >= window_end:
            return
        if spec.once and count >= len(spec.bodies):
            return
        body = spec.bodies[count % len(spec.bodies)].replace(b"__ID__", f"{prefix}-{count}".encode())
        count += spec.clients
        async with session.post(spec.url, data=body, headers=headers) as response:  # type: ignore[attr-defined]
            await response.read()
            status = int(response.status)
        out.statuses[status] = out.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            out.acked += spec.per_body
            if window_start <= time.perf_counter() < window_end:
                out.window_acked += spec.per_body


async def post_load(spec: PostSpec) -> PostResult:
    import aiohttp

    out = PostResult(window_s=spec.duration_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec.clients)) as session:
        begin = time.perf_counter() + 0.05
        await asyncio.gather(*(_client(i, session, spec, begin, out) for i in range(spec.clients)))
    return out


# ---------------------------------------------------------------------------- payloads
def fhir_bodies() -> list[bytes]:
    """Batch Bundles of :data:`FHIR_BATCH` Observations: the door stores each entry as its own raw record,
    so a resource is what travels to the national topic, and 1,000 resources/s needs only 100 requests/s."""
    from affluent.sim.synthetic import fhir_bundle
    from bench.fhir_rest import observations

    out = []
    for b in range(8):
        resources = observations(FHIR_BATCH)
        for n, resource in enumerate(resources):
            resource["id"] = f"__ID__-{b}-{n}"
        out.append(json.dumps(fhir_bundle("batch", resources), ensure_ascii=False).encode())
    return out


def device_bodies(count: int, batch: int, seed: int, sensors: list[str]) -> list[bytes]:
    from bench.devices import bodies

    return bodies(count, batch, seed=seed, sensors=sensors)


# ---------------------------------------------------------------------------- one channel, end to end
@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    unit: str
    url: str
    content_type: str
    facility: str
    paced: PostSpec
    flat: PostSpec


@dataclass(frozen=True, slots=True)
class Figures:
    latencies: list[float]
    paced: PostResult
    paced_drain_s: float
    flat: PostResult
    flat_rate: float  # end to end
    door_rate: float  # acknowledged by the door inside the flat-out window
    flat_records: int
    flat_drain_s: float


def measure(
    settings: Settings, registry: Registry, load: LoadProcess[PostSpec, PostResult], channel: Channel
) -> Figures:
    from schemas.catalog import NATIONAL_TOPICS

    hdh = sorted(t for t in NATIONAL_TOPICS if t.startswith("national.hdh."))
    watcher = NationalWatcher(settings.kafka, registry, hdh, channel.facility)
    try:
        print(f"  e2e_channels: {channel.name} paced {PACED_RATE} {channel.unit}/s", flush=True)
        begin = time.time()
        paced = load.run(channel.paced)
        window_end = begin + channel.paced.warmup_s + channel.paced.duration_s
        paced_end = wait_arrived(watcher, begin, paced.acked, 300)
        window = watcher.arrivals.between(begin + channel.paced.warmup_s, window_end)
        latencies = sorted(arrival - ingest for ingest, arrival in window)
        print(f"  e2e_channels: {channel.name} flat out", flush=True)
        flat_begin = time.time()
        flat = load.run(channel.flat)
        flat_end = wait_arrived(watcher, flat_begin, flat.acked, 420)
        records = len(watcher.arrivals.between(flat_begin, math.inf))
    finally:
        watcher.stop()
    flat_window_end = flat_begin + channel.flat.warmup_s + channel.flat.duration_s
    return Figures(
        latencies,
        paced,
        max(0.0, paced_end - window_end),
        flat,
        flat.acked / max(1e-9, flat_end - flat_begin),
        flat.window_acked / flat.window_s,
        records,
        max(0.0, flat_end - flat_window_end),
    )


def wait_arrived(watcher: NationalWatcher, since: float, expected: int, cap_s: float) -> float:
    """Epoch seconds of the last arrival of a record the door received after `since`, once `expected`
    of them arrived, or nothing new came for :data:`PATIENCE_S` (a few may be opposition drops), or at
    the cap. On a shared broker the workers also carry others' traffic and may pause for seconds: a
    short quiet period would end the wait early."""
    deadline, count, changed = time.monotonic() + cap_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        arrived = watcher.arrivals.between(since, math.inf)
        if len(arrived) != count:
            count, changed = len(arrived), time.monotonic()
        if count >= expected or time.monotonic() - changed > PATIENCE_S:
            break
        time.sleep(0.5)
    arrived = watcher.arrivals.between(since, math.inf)
    return max((arrival for _, arrival in arrived), default=since)


# ---------------------------------------------------------------------------- ceilings: the doors alone
async def _door_only(
    settings: Settings, load: LoadProcess[PostSpec, PostResult], fhir: PostSpec, dev: PostSpec
) -> tuple[float, float]:
    from connectors.devices.service import DeviceService
    from connectors.fhir_rest.service import FhirRestService

    raw, seen, dev_raw = (f"bench.e2ec.{n}.{uuid.uuid4().hex[:8]}" for n in ("fhir", "seen", "device"))
    ensure_topics(
        settings.kafka,
        [
            TopicSpec(raw, partitions=3),
            TopicSpec(seen, config=ACK_CACHE_CONFIG),
            TopicSpec(dev_raw, partitions=3),
        ],
    )
    try:
        door = FhirRestSettings(port=0, metrics_port=None, token_sha256={token_digest(TOKEN): "BENCHC|EDS"})
        service = FhirRestService(
            settings.model_copy(update={"fhir_rest": door}),
            CollectorRegistry(),
            raw_topic=raw,
            seen_topic=seen,
        )
        fhir_rate = await _rate_alone(service, load, replace(fhir, url="/fhir"))
        devices = DeviceSettings(
            port=0, metrics_port=None, tokens=[DeviceToken(sha256=token_digest(TOKEN), sender="BENCHC")]
        )
        dev_service = DeviceService(
            settings.model_copy(update={"devices": devices}), CollectorRegistry(), raw_topic=dev_raw
        )
        dev_rate = await _rate_alone(dev_service, load, replace(dev, url="/devices/gateway-batch"))
    finally:
        delete_topics(settings.kafka, [raw, seen, dev_raw])
    return fhir_rate, dev_rate


async def _rate_alone(service: Any, load: LoadProcess[PostSpec, PostResult], spec: PostSpec) -> float:
    """Acknowledged per second by a door started here on a free port (``spec.url``: the path)."""
    port = await service.start(with_telemetry=False)
    try:
        result = await asyncio.to_thread(load.run, replace(spec, url=f"http://127.0.0.1:{port}{spec.url}"))
    finally:
        await service.stop()
    return result.window_acked / result.window_s


# ---------------------------------------------------------------------------- the suite
@contextlib.contextmanager
def _pipeline(settings: Settings, run: str) -> Iterator[Pipeline]:

    extra = {
        "AFFLUENT_FHIR_REST__TOKEN_SHA256": json.dumps({token_digest(TOKEN): f"BENCHF{run}|EDS"}),
        "AFFLUENT_DEVICES__TOKENS": json.dumps([{"sha256": token_digest(TOKEN), "sender": f"BENCHD{run}"}]),
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-e2ec-") as logs,
        running_pipeline(settings, Path(logs), extra) as pipe,
    ):
        yield pipe


def _row(name: str, unit: str, f: Figures) -> list[list[str]]:
    p50, p99 = percentile(f.latencies, 50), percentile(f.latencies, 99)
    return [
        [
            f"{name}, paced {fmt_rate(PACED_RATE)} {unit}/s",
            fmt_rate(f.paced.window_acked / f.paced.window_s),
            fmt_count(len(f.latencies)),
            fmt_ms(p50),
            fmt_ms(p99),
            fmt_ms(f.latencies[-1]) if f.latencies else "n/a",
            f"{f.paced_drain_s:.1f} s",
        ],
        [
            f"{name}, flat out",
            fmt_rate(f.door_rate),
            fmt_count(f.flat_records),
            "",
            "",
            "",
            f"{f.flat_drain_s:.1f} s",
        ],
    ]


@register("e2e_channels")
def run(options: Options) -> SuiteResult:
    from bench.devices import link_bench_sensors

    settings = load_settings()
    started = time.perf_counter()
    warmup, paced_s, flat_s = options.seconds(5, 2), options.seconds(20, 6), options.seconds(15, 5)
    registry = Registry(settings.registry)
    run_id = uuid.uuid4().hex[:6].upper()
    sensors = [f"0012E2E{run_id}{n:03X}" for n in range(256)]
    link_bench_sensors(sensors)
    fhir_json, dev_json = "application/fhir+json", "application/json"
    paced_bodies = device_bodies(
        int(PACED_RATE / PACED_BATCH * (warmup + paced_s)) + 8, PACED_BATCH, 3, sensors
    )
    flat_bodies = device_bodies(3000, FLAT_BATCH, 40, sensors)  # distinct readings: dedup would hide work
    with (
        _pipeline(settings, run_id) as pipe,
        contextlib.closing(LoadProcess(post_load, "bench-e2ec-clients")) as load,
    ):
        env = pipe.env
        fhir_url = f"http://127.0.0.1:{env['AFFLUENT_FHIR_REST__PORT']}/fhir"
        dev_url = f"http://127.0.0.1:{env['AFFLUENT_DEVICES__PORT']}/devices/gateway-batch"
        fhir = Channel(
            f"FHIR Observations (batch Bundles of {FHIR_BATCH})",
            "resources",
            fhir_url,
            fhir_json,
            f"BENCHF{run_id}",
            PostSpec(
                fhir_url,
                fhir_json,
                CLIENTS,
                warmup,
                paced_s,
                fhir_bodies(),
                FHIR_BATCH,
                PACED_RATE / FHIR_BATCH,
            ),
            PostSpec(fhir_url, fhir_json, CLIENTS, warmup, flat_s, fhir_bodies(), FHIR_BATCH),
        )
        devices = Channel(
            "device readings (HTTP JSON)",
            "readings",
            dev_url,
            dev_json,
            f"BENCHD{run_id}",
            PostSpec(
                dev_url, dev_json, 4, warmup, paced_s, paced_bodies, PACED_BATCH, PACED_RATE / PACED_BATCH
            ),
            PostSpec(dev_url, dev_json, POSTERS, warmup, flat_s, flat_bodies, FLAT_BATCH, once=True),
        )
        fhir_figures = measure(settings, registry, load, fhir)
        device_figures = measure(settings, registry, load, devices)
        restarts = {name: child.get("restarts", 0) for name, child in pipe.children().items()}
    with contextlib.closing(LoadProcess(post_load, "bench-e2ec-door-clients")) as load:
        print("  e2e_channels: ceilings (the doors alone)", flush=True)
        fhir_door, device_door = asyncio.run(
            _door_only(settings, load, fhir.flat, replace(devices.flat, once=False))
        )
    rows = _row("FHIR", "resources", fhir_figures) + _row("devices", "readings", device_figures)
    ceilings = [
        [
            "FHIR end to end, flat out (acknowledged resources ÷ first send → last national record)",
            fmt_rate(fhir_figures.flat_rate),
            "",
        ],
        [
            "ceiling: the FHIR door alone, same load (resources/s)",
            fmt_rate(fhir_door),
            fmt_ratio(fhir_figures.flat_rate / fhir_door) if fhir_door else "n/a",
        ],
        [
            "devices end to end, flat out (acknowledged readings ÷ first send → last national record)",
            fmt_rate(device_figures.flat_rate),
            "",
        ],
        [
            "ceiling: the device door alone, same load (readings/s)",
            fmt_rate(device_door),
            fmt_ratio(device_figures.flat_rate / device_door) if device_door else "n/a",
        ],
    ]
    return SuiteResult(
        name="e2e_channels",
        title="End to end: FHIR R4 and device readings over HTTP → national topics (affluent run, this box)",
        tables=[
            Table(
                ["run", "door acks/s", "national hdh records", "p50", "p99", "max", "drain after sending"],
                rows,
                title="Latency (door reception → national record consumed) and drain",
            ),
            Table(
                ["figure", "per second", "end to end vs ceiling"],
                ceilings,
                title="Throughput and its ceilings",
            ),
        ],
        how_measured=(
            "`affluent run` (MLLP, FHIR and device doors, normalize and pseudonymize workers) with the local "
            "broker and registry on the same machine, fresh consumer groups at the topics' ends, the local "
            f"demo keys, bearer tokens of the run. A spawned client process posts FHIR batch Bundles of "
            f"{FHIR_BATCH} Observations ({CLIENTS} clients, each waiting for its answer; the door stores "
            "each entry as its own raw record) and `gateway-batch` device bodies (paced: "
            f"{PACED_BATCH} readings per body; flat out: {FLAT_BATCH} per body, {POSTERS} posters), first "
            f"paced at {PACED_RATE} per second ({warmup:.0f} s warm-up + {paced_s:.0f} s measured), then "
            f"flat out ({warmup:.0f} + {flat_s:.0f} s). This process consumes the national hdh topics; "
            "latency = arrival − envelope.ingest_time. Throughput ends when every acknowledged resource "
            f"(reading) has its national record, or none came for {PATIENCE_S:.0f} s. "
            "Ceilings: the same flat-out load against each door alone (in this process, "
            "scratch raw topic, no workers)."
        ),
        notes=[
            f"Restarts of `affluent run`'s children during the run: {restarts}.",
            "On a shared broker the run's workers also carry whatever others write to the raw and canonical "
            "topics meanwhile, and others' pipelines may process this run's raw records (a latency is that "
            "of the first record of an event to arrive, whichever pipeline made it).",
            f"The device flat-out run sends each of its {len(flat_bodies)} distinct bodies once at most (a "
            "resent body would collapse downstream): its door rate is low when they run out early.",
            f"FHIR answers: paced {fhir_figures.paced.statuses}, flat out {fhir_figures.flat.statuses}.",
            f"Device answers: paced {device_figures.paced.statuses}, "
            f"flat out {device_figures.flat.statuses}.",
        ],
        seconds=time.perf_counter() - started,
    )
