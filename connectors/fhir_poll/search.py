"""Incremental search of one resource type: page by page, store, then move the checkpoint.

The order of a page's work is the durability promise: every record of the page is acknowledged by
Kafka (``RawWriter.write_all``), *then* the checkpoint is written (``acks=all``). A crash anywhere
leaves the checkpoint at or behind what Kafka holds, never ahead of it.

The checkpoint moves page by page only while the server really returns ascending ``_lastUpdated``
(``_sort=_lastUpdated``); a server that ignores ``_sort`` makes a mid-search checkpoint unsafe, so the
puller then moves it once, after the last page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from affluent.core.errors import FhirSourceError, KafkaUnavailable
from connectors.fhir_poll.checkpoint import Checkpoint, CheckpointStore, instant
from connectors.fhir_poll.config import SourceConfig
from connectors.fhir_poll.http import FhirHttp
from connectors.fhir_poll.records import (
    FHIR_JSON,
    BadResource,
    Mark,
    Pulled,
    Unusable,
    bundle_resources,
    next_link,
    search_params,
    sort_out,
)
from connectors.raw import RawWriter
from formats.reasons import ReasonCode
from schemas.deadletter import DeadLetterWriter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TypeReport:
    """What one pass did for one type (counts only: nothing about a patient)."""

    source: str
    rtype: str
    pages: int = 0
    stored: int = 0
    skipped: int = 0
    dead: int = 0  # resources sent to dlq.ingest (no id, no version marker, not JSON)
    checkpoint: str | None = None


# Test and benchmark hook: called after each page is stored and checkpointed; may raise to stop there.
PageHook = Callable[[TypeReport], None]


async def sync_type(
    http: FhirHttp,
    source: SourceConfig,
    rtype: str,
    store: CheckpointStore,
    writer: RawWriter,
    dead: DeadLetterWriter,
    on_page: PageHook | None = None,
) -> TypeReport:
    report = TypeReport(source.name, rtype)
    checkpoint = store.get(source.name, rtype)
    first = search_params(source, checkpoint.last_updated or source.since)
    ascending = True
    latest: str | None = None
    unsaved: list[Mark] = []
    # The next page is asked for while this one is being stored: reading is safe to run ahead, only
    # the checkpoint must wait for Kafka.
    fetch: asyncio.Task[httpx.Response] | None = asyncio.create_task(
        http.get(f"{source.base}/{rtype}", f"{rtype} search", first)
    )
    try:
        while fetch is not None:
            response = await fetch
            fetch = None
            try:
                bundle = response.json()
                matches = ((r, None, "") for r in bundle_resources(bundle, rtype))
                items, unusable = sort_out(matches, source, "search")
            except (ValueError, BadResource, RecursionError) as exc:  # a hostile page must not crash
                reason = str(exc) if isinstance(exc, BadResource) else "search answer is not usable JSON"
                raise FhirSourceError(
                    f"source {source.name}: {rtype} page {report.pages + 1}: {reason}"
                ) from None
            url = next_link(bundle)
            if url is not None:
                http.pin(url, f"{rtype} search next link")  # paging stays on the source
                fetch = asyncio.create_task(http.get(url, f"{rtype} search"))
            fresh = [item for item in items if not checkpoint.already_stored(item.mark)]
            await store_page(writer, dead, source, fresh, unusable)
            report.pages += 1
            report.stored += len(fresh)
            report.skipped += len(items) - len(fresh)
            report.dead += len(unusable)
            latest, in_order = ordered_until(latest, items)
            if ascending and not in_order:
                log.warning("source %s: %s search is not sorted by _lastUpdated", source.name, rtype)
                ascending = False
            unsaved.extend(item.mark for item in items)
            if ascending:
                checkpoint = await _save(store, source.name, rtype, checkpoint, unsaved)
                unsaved = []
            report.checkpoint = checkpoint.last_updated
            if on_page is not None:
                on_page(report)
    finally:
        if fetch is not None:
            fetch.cancel()
            with contextlib.suppress(BaseException):
                await fetch
    if unsaved:
        checkpoint = await _save(store, source.name, rtype, checkpoint, unsaved)
        report.checkpoint = checkpoint.last_updated
    return report


async def store_page(
    writer: RawWriter,
    dead: DeadLetterWriter,
    source: SourceConfig,
    fresh: list[Pulled],
    unusable: list[Unusable],
) -> None:
    """Everything of one page in Kafka, or an exception: raw records, then dead letters for the rest.

    A dead letter that Kafka refused is an error here (unlike at a door, where the sender is told):
    the page's checkpoint must not move past a resource that is nowhere.
    """
    if fresh:
        await writer.write_all([item.message for item in fresh])
    for bad in unusable:
        written = await dead.write(
            stage="ingest",
            reason_code=ReasonCode.FHIR_UNUSABLE_RESOURCE,
            reason=bad.reason,
            payload=bad.payload,
            content_type=FHIR_JSON,
            source_facility=source.facility,
            source_application=source.application,
            connector="fhir_poll",
            protocol="fhir",
            attributes={"source": source.name},
        )
        if not written:
            raise KafkaUnavailable(f"source {source.name}: a dead letter was not stored")


def ordered_until(latest: str | None, items: list[Pulled]) -> tuple[str | None, bool]:
    """The latest ``lastUpdated`` after ``items``, and whether they kept ascending order from ``latest``."""
    in_order = True
    for item in items:
        if not item.last_updated:
            continue
        if latest is not None and instant(item.last_updated) < instant(latest):
            in_order = False
        else:
            latest = item.last_updated
    return latest, in_order


async def _save(
    store: CheckpointStore, source: str, rtype: str, checkpoint: Checkpoint, marks: list[Mark]
) -> Checkpoint:
    moved = checkpoint.advance(marks)
    if moved != checkpoint:
        await store.put(source, rtype, moved)
    return moved
