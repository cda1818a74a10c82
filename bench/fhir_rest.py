"""FHIR REST suite: acknowledged Observations per second (16 concurrent clients) and resources per
second in 100-entry Bundles, against the real broker, each beside its ceilings from the same run.

A client waits for its answer (201/200, given only after Kafka's delivery report) before its next
request, so throughput comes from the 16 concurrent clients. The clients run in a spawned process
(in-process they would share the door's GIL). Ceilings measured in the same run:

* **validation**: the door's own R4 check (stdlib JSON + fhir.resources R4B model) in one thread, no
  HTTP, no Kafka — the CPU bound of one door process;
* **Kafka**: a bare ``acks=all`` producer with the door's configuration, records of the same size;
* **HTTP echo**: the same clients against an aiohttp handler that reads the body and answers 201 —
  the bound of the harness and aiohttp on this machine.

One Bundle run uses ``validation_processes`` (Bundles validated in spawned processes, off the door's
event loop); "server CPU" counts the door process only, not those validation processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics, make_producer
from affluent.core.settings import FhirRestSettings, Settings, load_settings
from affluent.core.topics import ACK_CACHE_CONFIG
from affluent.sim import synthetic
from bench import Options, register
from bench.loadproc import LoadProcess
from bench.machine import process_cpu
from bench.mllp import delete_topics
from bench.report import (
    SuiteResult,
    Table,
    Target,
    fmt_ms,
    fmt_percent,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    percentile,
)
from connectors.fhir_rest.auth import token_digest
from connectors.fhir_rest.service import FhirRestService
from formats.fhir.validate import parse_json, validate_resource

SINGLE_TARGET = 2_000  # acknowledged single Observations/s, 16 clients
BUNDLE_TARGET = 10_000  # resources/s in 100-entry Bundles, 16 clients
CLIENTS = 16
BUNDLE_SIZE = 100
POOL = 2  # validation processes in the pooled Bundle run (this machine has 2 cores)
TOKEN = "bench-token-not-a-secret"
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    clients: int
    warmup_s: float
    duration_s: float
    templates: list[bytes]  # bodies with ``__ID__`` where each request puts a unique id
    resources_per_request: int


@dataclass(slots=True)
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    window_requests: int = 0
    latencies: list[float] = field(default_factory=list)
    window_s: float = 0.0
    cpu_s: float = 0.0


async def _client(
    index: int, session: aiohttp.ClientSession, spec: LoadSpec, begin: float, out: LoadResult
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    window_start, window_end = begin + spec.warmup_s, begin + spec.warmup_s + spec.duration_s
    prefix = uuid.uuid4().hex[:8]
    count = 0
    perf = time.perf_counter
    while perf() < window_end:
        body = spec.templates[count % len(spec.templates)].replace(
            b"__ID__", f"{prefix}-{index}-{count}".encode()
        )
        sent = perf()
        async with session.post(spec.url, data=body, headers=headers) as response:
            await response.read()
            status = response.status
        done = perf()
        count += 1
        out.statuses[status] += 1
        if window_start <= done < window_end and status in (200, 201):
            out.window_requests += 1
            out.latencies.append(done - sent)


async def drive(spec: LoadSpec) -> LoadResult:
    cpu0 = time.process_time()
    out = LoadResult(window_s=spec.duration_s)
    connector = aiohttp.TCPConnector(limit=spec.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        begin = time.perf_counter()
        await asyncio.gather(*(_client(i, session, spec, begin, out) for i in range(spec.clients)))
    out.latencies.sort()
    out.cpu_s = time.process_time() - cpu0
    return out


# ---------------------------------------------------------------------------- payloads and ceilings
def observations(count: int) -> list[dict[str, Any]]:
    rng = random.Random(17)
    patients = synthetic.cohort(17, 20)
    when = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    return [
        synthetic.fhir_observation(rng, patients[n % len(patients)], "__ID__", when) for n in range(count)
    ]


def single_templates() -> list[bytes]:
    return [json.dumps(o, ensure_ascii=False).encode() for o in observations(64)]


def bundle_templates(kind: str) -> list[bytes]:
    out = []
    for b in range(4):
        resources = observations(BUNDLE_SIZE)
        for n, r in enumerate(resources):
            r["id"] = f"__ID__-{b}-{n}"
        out.append(json.dumps(synthetic.fhir_bundle(kind, resources), ensure_ascii=False).encode())
    return out


def validation_rate(seconds: float) -> float:
    """Resources/s through the door's check (parse + R4B model) in one thread."""
    bodies = [t.replace(b"__ID__", b"obs-1") for t in single_templates()]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for body in bodies:
            validate_resource(parse_json(body), "Observation")
        done += len(bodies)
    return done / (time.perf_counter() - start)


def producer_rate(settings: Settings, topic: str, value: bytes, seconds: float) -> float:
    producer = make_producer(settings.kafka)
    ok: Counter[bool] = Counter()

    def on_delivery(err: Any, _msg: Any) -> None:
        ok[err is None] += 1

    producer.produce(topic, value, b"BENCH|FHIR")
    producer.flush(30)
    start, produced = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        try:
            producer.produce(topic, value, b"BENCH|FHIR", on_delivery=on_delivery)
            produced += 1
        except BufferError:
            producer.poll(0.005)
        if produced % 512 == 0:
            producer.poll(0)
    producer.flush(60)
    return ok[True] / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------- the suite
@dataclass(frozen=True, slots=True)
class Run:
    label: str
    load: LoadResult
    resources_per_request: int
    server_cpu: float  # fraction of one core over the run
    server_cpu_s: float  # CPU seconds of the door process over the run

    @property
    def cpu_per_resource(self) -> float:
        """Door CPU per resource answered (warm-up included): steadier than a rate on a busy machine."""
        answered = sum(self.load.statuses.values()) * self.resources_per_request
        return self.server_cpu_s / max(1, answered)

    @property
    def requests_rate(self) -> float:
        return self.load.window_requests / self.load.window_s

    @property
    def resources_rate(self) -> float:
        return self.requests_rate * self.resources_per_request

    def p(self, q: float) -> float:
        return percentile(self.load.latencies, q)


async def _measure(label: str, clients: LoadProcess[Any, Any], spec: LoadSpec) -> Run:
    cpu0, t0 = process_cpu_self(), time.perf_counter()
    load = cast(LoadResult, await asyncio.to_thread(clients.run, spec))
    cpu_s = process_cpu_self() - cpu0
    return Run(label, load, spec.resources_per_request, cpu_s / (time.perf_counter() - t0), cpu_s)


def process_cpu_self() -> float:
    return process_cpu(os.getpid())


async def _collect(options: Options) -> tuple[list[Run], float, float]:
    settings = load_settings()
    warmup, duration = options.seconds(2, 1), options.seconds(10, 3)
    raw, seen, ceiling = (f"bench.fhir.{n}.{uuid.uuid4().hex[:8]}" for n in ("raw", "seen", "ceiling"))
    await asyncio.to_thread(
        ensure_topics,
        settings.kafka,
        [
            TopicSpec(raw, partitions=3),
            TopicSpec(seen, config=ACK_CACHE_CONFIG),
            TopicSpec(ceiling, partitions=3),
        ],
    )
    runs: list[Run] = []
    try:
        with contextlib.closing(LoadProcess(drive, "bench-fhir-clients")) as clients:
            async with echo_server() as echo_port:
                for label, templates, per in (
                    ("HTTP echo, single Observation", single_templates(), 1),
                    ("HTTP echo, 100-entry Bundle", bundle_templates("transaction"), BUNDLE_SIZE),
                ):
                    spec = LoadSpec(
                        f"http://{HOST}:{echo_port}/fhir", CLIENTS, warmup, duration, templates, per
                    )
                    runs.append(await _measure(label, clients, spec))
            door_runs = (
                (0, "door, single Observation", "/Observation", single_templates()),
                (0, "door, transaction Bundle (1 record)", "", bundle_templates("transaction")),
                (0, "door, batch Bundle (100 records)", "", bundle_templates("batch")),
                (
                    POOL,
                    f"door, transaction Bundle, {POOL} validation processes",
                    "",
                    bundle_templates("transaction"),
                ),
            )
            for processes in sorted({r[0] for r in door_runs}):
                fhir = FhirRestSettings(
                    port=0,
                    metrics_port=None,
                    validation_processes=processes,
                    token_sha256={token_digest(TOKEN): "BENCH|FHIR"},
                )
                door_settings = settings.model_copy(update={"fhir_rest": fhir})
                service = FhirRestService(door_settings, CollectorRegistry(), raw_topic=raw, seen_topic=seen)
                port = await service.start(with_telemetry=False)
                try:
                    for _, label, path, templates in (r for r in door_runs if r[0] == processes):
                        per = 1 if path else BUNDLE_SIZE
                        spec = LoadSpec(
                            f"http://{HOST}:{port}/fhir{path}", CLIENTS, warmup, duration, templates, per
                        )
                        runs.append(await _measure(label, clients, spec))
                finally:
                    await service.stop()
        validation = await asyncio.to_thread(validation_rate, options.seconds(5, 2))
        record = single_templates()[0].replace(b"__ID__", b"x" * 20) + b"x" * 200  # ~ a raw record's size
        kafka = await asyncio.to_thread(producer_rate, settings, ceiling, record, options.seconds(5, 2))
    finally:
        await asyncio.to_thread(delete_topics, settings.kafka, [raw, seen, ceiling])
    return runs, validation, kafka


@register("fhir_rest")
def run(options: Options) -> SuiteResult:
    started = time.perf_counter()
    runs, validation, kafka = asyncio.run(_collect(options))
    by = {r.label: r for r in runs}
    rows = [
        [
            r.label,
            f"**{fmt_rate(r.resources_rate)}**",
            fmt_rate(r.requests_rate),
            fmt_ms(r.p(50)),
            fmt_ms(r.p(99)),
            fmt_ratio(r.resources_rate / validation),
            fmt_percent(r.server_cpu),
            fmt_us(r.cpu_per_resource),
            ", ".join(f"{k}: {v}" for k, v in sorted(r.load.statuses.items())),
        ]
        for r in runs
    ]
    table = Table(
        [
            "run (16 clients)",
            "resources/s",
            "requests/s",
            "p50",
            "p99",
            "vs validation ceiling",
            "server CPU",
            "server CPU/resource",
            "answers",
        ],
        rows,
        title="Acknowledged (2xx after Kafka's delivery report) with 16 concurrent clients",
    )
    ceilings = Table(
        ["ceiling", "rate"],
        [
            ["validation: stdlib JSON + R4B model, one thread (resources/s)", fmt_rate(validation)],
            ["validation cost per Observation", fmt_us(1 / validation)],
            ["bare acks=all producer, ~1 KB records (records/s)", fmt_rate(kafka)],
        ],
        title="Ceilings measured in the same run",
        align=["l", "r"],
    )
    single = by["door, single Observation"]
    bundle = max(
        (r for r in runs if r.label.startswith("door,") and r.resources_per_request > 1),
        key=lambda r: r.resources_rate,
    )
    return SuiteResult(
        name="fhir_rest",
        title="FHIR REST door",
        tables=[table, ceilings],
        how_measured=__doc__ or "",
        targets=[
            Target(
                "FHIR single Observations acknowledged/s, 16 clients",
                f"≥ {SINGLE_TARGET:,}",
                fmt_rate(single.resources_rate),
                single.resources_rate >= SINGLE_TARGET,
            ),
            Target(
                f"FHIR resources/s in 100-entry Bundles ({bundle.label})",
                f"≥ {BUNDLE_TARGET:,}",
                fmt_rate(bundle.resources_rate),
                bundle.resources_rate >= BUNDLE_TARGET,
            ),
        ],
        notes=[
            "Every resource is validated against the R4 model before it is stored: one door process "
            "cannot exceed the validation ceiling; more needs more door processes behind a load balancer.",
        ],
        seconds=time.perf_counter() - started,
    )
