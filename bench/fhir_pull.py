"""FHIR puller suite: resources per second pulled from a local FHIR server into Kafka (acknowledged).

The in-test FHIR server (``tests/support/fhir_server.py``) runs in its own spawned process, seeded with
synthetic Patients and Observations, so that its JSON work does not share the puller's GIL. Figures:

- search mode (``_lastUpdated`` paging, one checkpoint per page) at two page sizes, and Bulk ``$export``
  (NDJSON), each a full pass into a fresh raw topic, counted when Kafka acknowledged every record;
- ceilings measured in the same run: the server's bare page-serving rate as read by a client that
  follows ``next`` links, parses the Bundles and stores nothing; and the ``acks=all`` produce rate of
  the very raw records the puller writes, sent a page at a time as the puller does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from multiprocessing.connection import Connection

import httpx

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from affluent.core.settings import FhirPollSettings, Settings, load_settings
from affluent.core.topics import COMPACTED_CONFIG, value_subject
from bench import Options, register
from bench.report import SuiteResult, Table, fmt_count, fmt_rate, fmt_ratio
from connectors.fhir_poll.config import SourceConfig
from connectors.fhir_poll.puller import open_puller
from connectors.fhir_poll.records import bundle_resources, next_link, pulled
from connectors.raw import RawWriter
from schemas.registry import AvroCodec, Registry, load_schema


def _serve(patients: int, observations: int, conn: Connection) -> None:
    """Child process: seed the server, send its base URL, serve until the parent closes the pipe."""
    from tests.support.fhir_server import FhirTestServer

    async def main() -> None:
        server = FhirTestServer(polls_before_ready=1, retry_after_s=0, file_lines=5_000)
        server.seed("Patient", patients, per_instant=2)
        server.seed("Observation", observations, per_instant=2)
        conn.send(await server.start())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # blocks until told to stop
        await server.stop()

    asyncio.run(main())


async def _bare_read(
    base: str, types: list[str], page_size: int
) -> tuple[int, float, list[dict[str, object]]]:
    started = time.perf_counter()
    seen: list[dict[str, object]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for rtype in types:
            url: str | None = f"{base}/{rtype}"
            params: dict[str, str] | None = {"_sort": "_lastUpdated", "_count": str(page_size)}
            while url is not None:
                bundle = (await client.get(url, params=params)).json()
                seen.extend(bundle_resources(bundle, rtype))
                url, params = next_link(bundle), None
    return len(seen), time.perf_counter() - started, seen


async def _produce_ceiling(
    settings: Settings, source: SourceConfig, resources: list[dict[str, object]], batch: int
) -> float:
    topic = f"bench.fhirpull.ceiling.{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(ensure_topics, settings.kafka, [TopicSpec(topic)])
    codec = AvroCodec(
        Registry(settings.registry), value_subject(topic), load_schema("raw_message"), "BACKWARD"
    )
    messages = [pulled(r, source, "search").message for r in resources]
    producer = DurableProducer(settings.kafka)
    writer = RawWriter(producer, codec, topic)
    try:
        started = time.perf_counter()
        for n in range(0, len(messages), batch):
            await writer.write_all(messages[n : n + batch])
        return len(messages) / (time.perf_counter() - started)
    finally:
        await asyncio.to_thread(producer.close)


async def _pull(settings: Settings, source: SourceConfig) -> tuple[int, float]:
    fp = FhirPollSettings(
        raw_topic=f"bench.fhirpull.raw.{uuid.uuid4().hex[:8]}",
        checkpoint_topic=f"bench.fhirpull.cp.{uuid.uuid4().hex[:8]}",
        metrics_port=None,
        bulk_poll_s=0.05,
    )
    await asyncio.to_thread(
        ensure_topics,
        settings.kafka,
        [TopicSpec(fp.raw_topic), TopicSpec(fp.checkpoint_topic, config=COMPACTED_CONFIG)],
    )
    async with open_puller(settings.model_copy(update={"fhir_poll": fp}), source) as puller:
        started = time.perf_counter()
        reports = await puller.run_once()
        elapsed = time.perf_counter() - started
    return sum(r.stored for r in reports), elapsed


async def _measure(settings: Settings, base: str) -> list[list[str]]:
    types = ["Patient", "Observation"]
    source = SourceConfig(
        name="bench", base_url=base, facility="CHU-BENCH", resource_types=types, page_size=100
    )
    count, bare_s, resources = await _bare_read(base, types, 500)
    bare = count / bare_s
    produce = await _produce_ceiling(settings, source, resources, 500)
    rows = [
        ["ceiling: bare page reads (500/page, parse, store nothing)", fmt_count(count), fmt_rate(bare), ""],
        ["ceiling: acks=all produce of the raw records (500/batch)", fmt_count(count), fmt_rate(produce), ""],
    ]
    ceiling = min(bare, produce)
    for label, changes in (
        ("search, 100/page, checkpoint per page", {"page_size": 100}),
        ("search, 500/page, checkpoint per page", {"page_size": 500}),
        ("bulk $export (NDJSON), 500/batch", {"page_size": 500, "mode": "bulk"}),
    ):
        stored, elapsed = await _pull(settings, source.model_copy(update=changes))
        rate = stored / elapsed
        rows.append([label, fmt_count(stored), fmt_rate(rate), fmt_ratio(rate / ceiling)])
    return rows


@register("fhir_pull")
def fhir_pull(options: Options) -> SuiteResult:
    started = time.perf_counter()
    settings = load_settings()
    patients, observations = (2_000, 3_000) if options.quick else (8_000, 12_000)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(patients, observations, child), daemon=True)
    server.start()
    try:
        base = parent.recv()
        rows = asyncio.run(_measure(settings, base))
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    return SuiteResult(
        name="fhir_pull",
        title="FHIR puller: resources/s from a local FHIR server into Kafka (acknowledged)",
        tables=[Table(["run", "resources", "per second", "vs lower ceiling"], rows)],
        how_measured=(
            f"{patients:,} synthetic Patients and {observations:,} lab Observations (two per lastUpdated "
            "instant) in the in-test FHIR server, run in its own process. Each pull is one `run_once` pass "
            "of a fresh source (fresh raw and checkpoint topics) against the local broker: every page "
            "stored with acks=all, then its checkpoint written, before the next page is asked for. "
            "Ceilings in the same run: a client reading every search page (following next links, parsing "
            "the Bundles) and storing nothing; and the acks=all produce rate of the same raw records, "
            "Avro-encoded, 500 per batch. The ratio is against the lower of the two."
        ),
        seconds=time.perf_counter() - started,
    )
