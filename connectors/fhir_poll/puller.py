"""One source's sync pass, and the long-running loop around it (``affluent pull [--follow]``).

:class:`Puller` only sequences: it asks :mod:`search` or :mod:`bulk` to sync each type and counts
what happened. :func:`open_puller` owns the start-up order: the checkpoint topic is read to its end
*before* the first request to the source, so a restarted puller resumes where Kafka says it stood.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry, Counter

from affluent.core.compacted import CompactedView
from affluent.core.errors import AffluentError
from affluent.core.kafka import TopicSpec
from affluent.core.origins import origin_of
from affluent.core.producer import DurableProducer
from affluent.core.settings import FhirPollSettings, Settings
from affluent.core.topics import COMPACTED_CONFIG
from connectors.fhir_poll.auth import SmartTokens, token_source
from connectors.fhir_poll.bulk import sync_bulk
from connectors.fhir_poll.checkpoint import CheckpointStore
from connectors.fhir_poll.config import SourceConfig, check_transport
from connectors.fhir_poll.http import FhirHttp, RetryPolicy
from connectors.fhir_poll.search import PageHook, TypeReport, sync_type
from connectors.raw import RawWriter
from connectors.runtime import open_kafka, topic_codec
from schemas.deadletter import DeadLetterWriter
from schemas.registry import Registry

log = logging.getLogger(__name__)


class PullMetrics:
    """Counts per source and type; a source name and a FHIR type are configuration, not patient data."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.resources = Counter(
            "affluent_fhir_pull_resources_total",
            "Resources stored in Kafka by the FHIR puller",
            ["source", "type"],
            registry=registry,
        )
        self.skipped = Counter(
            "affluent_fhir_pull_skipped_total",
            "Resources seen again at a checkpoint's boundary instant and not stored twice",
            ["source", "type"],
            registry=registry,
        )
        self.dead = Counter(
            "affluent_fhir_pull_dead_letters_total",
            "Pulled resources that could not be stored as raw records (sent to dlq.ingest)",
            ["source", "type"],
            registry=registry,
        )
        self.passes = Counter(
            "affluent_fhir_pull_passes_total",
            "Sync passes by outcome",
            ["source", "outcome"],
            registry=registry,
        )


@dataclass
class Puller:
    source: SourceConfig
    http: FhirHttp
    store: CheckpointStore
    writer: RawWriter
    dead: DeadLetterWriter
    settings: FhirPollSettings
    metrics: PullMetrics = field(default_factory=lambda: PullMetrics(CollectorRegistry()))
    on_page: PageHook | None = None

    async def run_once(self) -> list[TypeReport]:
        """One pass over every configured type; raises on the first failure (checkpoints stay behind)."""
        try:
            if self.source.mode == "bulk":
                reports = await sync_bulk(
                    self.http,
                    self.source,
                    self.store,
                    self.writer,
                    self.dead,
                    self.settings.bulk_poll_s,
                    self.settings.bulk_timeout_s,
                )
            else:
                reports = [
                    await sync_type(
                        self.http, self.source, rtype, self.store, self.writer, self.dead, self.on_page
                    )
                    for rtype in self.source.resource_types
                ]
        except BaseException:
            self.metrics.passes.labels(self.source.name, "failed").inc()
            raise
        for report in reports:
            self.metrics.resources.labels(self.source.name, report.rtype).inc(report.stored)
            self.metrics.skipped.labels(self.source.name, report.rtype).inc(report.skipped)
            self.metrics.dead.labels(self.source.name, report.rtype).inc(report.dead)
        self.metrics.passes.labels(self.source.name, "ok").inc()
        return reports

    async def follow(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; a failed pass is logged (reason only) and retried next time."""
        interval = self.source.interval_s or self.settings.interval_s
        while not stop.is_set():
            try:
                await self.run_once()
            except AffluentError as exc:
                log.error("%s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def retry_policy(settings: FhirPollSettings) -> RetryPolicy:
    return RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s)


@contextlib.asynccontextmanager
async def open_puller(
    settings: Settings,
    source: SourceConfig,
    metrics_registry: CollectorRegistry | None = None,
    on_page: PageHook | None = None,
) -> AsyncIterator[Puller]:
    """Topics, codec, producer, checkpoint view and HTTP client for one source; all closed on exit."""
    fp = settings.fhir_poll
    check_transport(source, fp.allow_plaintext)
    specs = [
        TopicSpec(fp.raw_topic),
        TopicSpec(fp.dlq_topic),
        TopicSpec(fp.checkpoint_topic, config=COMPACTED_CONFIG),
    ]
    await open_kafka(settings.kafka, specs)
    registry = Registry(settings.registry)
    codec = await topic_codec(registry, fp.raw_topic, "raw_message")
    dlq_codec = await topic_codec(registry, fp.dlq_topic, "dead_letter")
    view = CompactedView(settings.kafka, fp.checkpoint_topic, name="fhir-poll-checkpoints")
    await asyncio.to_thread(view.start)
    producer = DurableProducer(settings.kafka)
    tokens = token_source(source)
    try:
        async with httpx.AsyncClient(timeout=fp.http_timeout_s, follow_redirects=True) as client:
            http = FhirHttp(
                client,
                source.name,
                tokens,
                retry_policy(fp),
                origin=origin_of(source.base),
                allow_plaintext=fp.allow_plaintext or source.allow_plaintext,
            )
            if isinstance(tokens, SmartTokens):
                tokens.http = http
            yield Puller(
                source,
                http,
                CheckpointStore(view, producer),
                RawWriter(producer, codec, fp.raw_topic),
                DeadLetterWriter(producer, dlq_codec, fp.dlq_topic),
                fp,
                PullMetrics(metrics_registry or CollectorRegistry()),
                on_page,
            )
    finally:
        await asyncio.to_thread(producer.close)
        await asyncio.to_thread(view.stop)
