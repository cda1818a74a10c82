"""FHIR Bulk Data ``$export`` of a source: kick-off, status polling, NDJSON download, checkpoints.

Where the token goes: the status URL must be on the source's origin (it is polled and deleted with the
token). Output files may live elsewhere (the Bulk Data spec allows e.g. object-store URLs, then with
``requiresAccessToken: false``): such a file is fetched without the token, over https. A file that
``requiresAccessToken`` on another origin is refused rather than handed the source's token.

Types whose checkpoints agree share one export (``_type`` lists them, ``_since`` is their checkpoint).
Each type's checkpoint becomes the manifest's ``transactionTime`` only after every NDJSON file of that
type is stored in Kafka; the spec guarantees that a later ``_since=<transactionTime>`` export misses
nothing. An export that reports errors moves no checkpoint: the next pass asks again, and what was
already stored collapses by raw id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from affluent.core.errors import AffluentError, FhirSourceError
from affluent.core.origins import origin_of
from connectors.fhir_poll.checkpoint import Checkpoint, CheckpointStore, PendingExport
from connectors.fhir_poll.config import SourceConfig
from connectors.fhir_poll.http import FhirHttp, expect_ok, retry_after_s
from connectors.fhir_poll.records import Resource, ndjson_line, sort_out
from connectors.fhir_poll.search import TypeReport, store_page
from connectors.raw import RawWriter
from schemas.deadletter import DeadLetterWriter

log = logging.getLogger(__name__)


def export_groups(source: SourceConfig, store: CheckpointStore) -> dict[str | None, list[str]]:
    """Types grouped by the ``_since`` they need (None: never exported, or the source's ``since``)."""
    groups: dict[str | None, list[str]] = defaultdict(list)
    for rtype in source.resource_types:
        groups[store.get(source.name, rtype).last_updated or source.since].append(rtype)
    return dict(groups)


def manifest_outputs(manifest: Mapping[str, Any], types: list[str]) -> dict[str, list[str]]:
    """Output file URLs per requested type (files of other types are not ours to store)."""
    files: dict[str, list[str]] = {t: [] for t in types}
    for output in manifest.get("output") or []:
        if isinstance(output, Mapping) and output.get("type") in files and isinstance(output.get("url"), str):
            files[str(output["type"])].append(str(output["url"]))
    return files


async def sync_bulk(
    http: FhirHttp,
    source: SourceConfig,
    store: CheckpointStore,
    writer: RawWriter,
    dead: DeadLetterWriter,
    poll_s: float,
    timeout_s: float,
) -> list[TypeReport]:
    reports: list[TypeReport] = []
    for since, types in export_groups(source, store).items():
        reports.extend(await _export(http, source, store, writer, dead, since, types, poll_s, timeout_s))
    return reports


async def _export(
    http: FhirHttp,
    source: SourceConfig,
    store: CheckpointStore,
    writer: RawWriter,
    dead: DeadLetterWriter,
    since: str | None,
    types: list[str],
    poll_s: float,
    timeout_s: float,
) -> list[TypeReport]:
    pending = store.pending_export(source.name)
    if pending is not None and (pending.types, pending.since) == (tuple(types), since):
        try:  # a previous run kicked this export off and stopped before the end: pick it up
            manifest = await _wait_for_manifest(http, source, pending.status_url, poll_s, timeout_s)
        except _Gone:
            log.info("source %s: the pending bulk export is gone, asking again", source.name)
        except asyncio.CancelledError:
            raise  # a shutdown: the export stays pending for the next run
        except BaseException:
            await _abandon(http, store, source, pending.status_url)
            raise
        else:
            return await _finish(http, source, store, writer, dead, types, pending.status_url, manifest)
    status_url = await _kick_off(http, source, types, since)
    try:
        await store.set_pending_export(source.name, PendingExport(status_url, tuple(types), since))
        manifest = await _wait_for_manifest(http, source, status_url, poll_s, timeout_s)
    except asyncio.CancelledError:
        raise
    except BaseException:
        await _abandon(http, store, source, status_url)
        raise
    return await _finish(http, source, store, writer, dead, types, status_url, manifest)


async def _kick_off(http: FhirHttp, source: SourceConfig, types: list[str], since: str | None) -> str:
    params = {"_type": ",".join(types)}
    if since:
        params["_since"] = since
    kickoff = await http.request(
        "GET",
        f"{source.base}/$export",
        "bulk kick-off",
        params=params,
        headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
    )
    status_url = kickoff.headers.get("Content-Location")
    if kickoff.status_code != 202 or not status_url:
        raise FhirSourceError(
            f"source {source.name}: bulk kick-off answered HTTP {kickoff.status_code}"
            + ("" if status_url else " without Content-Location")
        )
    status_url = str(kickoff.url.join(status_url))
    http.pin(status_url, "bulk status URL")
    return status_url


async def _finish(
    http: FhirHttp,
    source: SourceConfig,
    store: CheckpointStore,
    writer: RawWriter,
    dead: DeadLetterWriter,
    types: list[str],
    status_url: str,
    manifest: Mapping[str, Any],
) -> list[TypeReport]:
    """Store every file, then move each type's checkpoint to the manifest's transactionTime.

    A shutdown midway leaves the export pending: the next run fetches the manifest again and stores
    the files again (same raw ids). Any other failure abandons it: the next pass asks afresh.
    """
    try:
        transaction_time = manifest.get("transactionTime")
        if not isinstance(transaction_time, str):
            raise FhirSourceError(f"source {source.name}: bulk manifest without transactionTime")
        needs_token = bool(manifest.get("requiresAccessToken", False))
        reports = []
        for rtype, urls in manifest_outputs(manifest, types).items():
            reports.append(await _store_files(http, source, writer, dead, rtype, urls, needs_token))
        errors = manifest.get("error") or []
        if errors:
            raise FhirSourceError(
                f"source {source.name}: bulk export reported {len(errors)} error file(s); "
                "checkpoints not moved, the next pass asks again"
            )
        for report in reports:
            await store.put(source.name, report.rtype, Checkpoint(transaction_time))
            report.checkpoint = transaction_time
    except asyncio.CancelledError:
        raise
    except BaseException:
        await _abandon(http, store, source, status_url)
        raise
    await _abandon(http, store, source, status_url)  # the spec's "done with these files"
    return reports


async def _abandon(http: FhirHttp, store: CheckpointStore, source: SourceConfig, status_url: str) -> None:
    """DELETE the status URL (the spec's cancel / release) and forget the pending export."""
    await _delete(http, status_url)
    try:
        await store.set_pending_export(source.name, None)
    except AffluentError:
        # Kafka is down: the next run finds the export gone (404) and kicks off a new one.
        log.info("source %s: could not clear the pending bulk export", source.name)


class _Gone(FhirSourceError):
    """The status URL of a pending export answers 404/410: the server expired or deleted it."""


async def _wait_for_manifest(
    http: FhirHttp, source: SourceConfig, status_url: str, poll_s: float, timeout_s: float
) -> Mapping[str, Any]:
    deadline = time.monotonic() + timeout_s
    http.pin(status_url, "bulk status URL")
    while True:
        response = await http.request(
            "GET", status_url, "bulk status", headers={"Accept": "application/json"}
        )
        if response.status_code == 200:
            try:
                manifest = response.json()
            except (ValueError, RecursionError):
                manifest = None
            if not isinstance(manifest, Mapping):
                raise FhirSourceError(f"source {source.name}: bulk manifest is not a JSON object")
            return manifest
        if response.status_code in (404, 410):
            raise _Gone(f"source {source.name}: bulk status answered HTTP {response.status_code}")
        if response.status_code != 202:
            raise FhirSourceError(f"source {source.name}: bulk status answered HTTP {response.status_code}")
        progress = response.headers.get("X-Progress", "")
        log.info("source %s: bulk export in progress %s", source.name, progress[:40])
        wait = retry_after_s(response.headers.get("Retry-After"))
        wait = poll_s if wait is None else wait
        if time.monotonic() + wait > deadline:
            raise FhirSourceError(f"source {source.name}: bulk export not ready within {timeout_s:.0f} s")
        await http.sleep(wait)


async def _store_files(
    http: FhirHttp,
    source: SourceConfig,
    writer: RawWriter,
    dead: DeadLetterWriter,
    rtype: str,
    urls: list[str],
    needs_token: bool,
) -> TypeReport:
    report = TypeReport(source.name, rtype)
    for url in urls:
        if needs_token:
            http.pin(url, f"bulk file of {rtype} (requiresAccessToken)")
        response = await http.request(
            "GET",
            url,
            f"bulk file of {rtype}",
            headers={"Accept": "application/fhir+ndjson"},
            authenticated=needs_token,
            stream=True,
        )
        try:
            expect_ok(response, source.name, f"bulk file of {rtype}")
            # Streamed: an export file can be gigabytes; at most one batch of it is held in memory.
            batch: list[tuple[Resource | None, bytes, str]] = []
            number = 0
            async for line in byte_lines(response.aiter_bytes()):
                number += 1
                parsed = ndjson_line(number, line)
                if parsed is not None:
                    batch.append(parsed)
                if len(batch) >= source.page_size:
                    await _store_batch(writer, dead, source, batch, report)
                    batch = []
            await _store_batch(writer, dead, source, batch, report)
        except httpx.TransportError as exc:
            raise FhirSourceError(
                f"source {source.name}: bulk file of {rtype} broke off ({type(exc).__name__})"
            ) from None
        finally:
            await response.aclose()
        report.pages += 1
    return report


async def byte_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Lines of a byte stream, split on LF and kept as bytes: the raw record holds the server's bytes."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def _store_batch(
    writer: RawWriter,
    dead: DeadLetterWriter,
    source: SourceConfig,
    batch: list[tuple[Resource | None, bytes, str]],
    report: TypeReport,
) -> None:
    items, unusable = sort_out(iter(batch), source, "bulk")
    await store_page(writer, dead, source, items, unusable)
    report.stored += len(items)
    report.dead += len(unusable)


async def _delete(http: FhirHttp, status_url: str) -> None:
    if http.origin is not None and origin_of(status_url) != http.origin:
        return  # never the token to another origin; the server expires the export on its own
    try:
        await asyncio.shield(http.client.delete(status_url, headers=await http.tokens.headers()))
    except Exception:  # the export is done or abandoned either way; the server expires its files
        log.info("source %s: could not delete the bulk status URL", http.source)
