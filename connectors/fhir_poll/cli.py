"""What ``affluent pull`` does: pick the source, then one pass, a follow loop, or a checkpoint reset."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from prometheus_client import CollectorRegistry

from affluent.core.errors import ConfigError
from affluent.core.settings import Settings
from affluent.core.telemetry import TelemetryServer
from connectors.fhir_poll.config import SourceConfig, load_sources
from connectors.fhir_poll.puller import open_puller
from connectors.fhir_poll.search import TypeReport


def find_source(settings: Settings, name: str, sources_file: Path | None) -> SourceConfig:
    path = sources_file or settings.fhir_poll.sources
    if path is None:
        raise ConfigError("no FHIR sources file: pass --sources or set AFFLUENT_FHIR_POLL__SOURCES")
    sources = load_sources(path)
    if name not in sources:
        raise ConfigError(f"source {name} is not in {path} (known: {', '.join(sorted(sources)) or 'none'})")
    return sources[name]


def summary(reports: list[TypeReport]) -> str:
    return "; ".join(
        f"{r.rtype}: {r.stored} stored, {r.skipped} skipped, {r.pages} page(s), "
        f"checkpoint {r.checkpoint or '-'}"
        for r in reports
    )


async def pull_once(settings: Settings, source: SourceConfig) -> list[TypeReport]:
    async with open_puller(settings, source) as puller:
        return await puller.run_once()


async def reset(settings: Settings, source: SourceConfig, types: list[str]) -> list[str]:
    """Forget the checkpoints of ``types`` (all configured types when empty): a full resync next pass."""
    chosen = types or source.resource_types
    async with open_puller(settings, source) as puller:
        for rtype in chosen:
            await puller.store.reset(source.name, rtype)
    return chosen


async def follow(settings: Settings, source: SourceConfig) -> None:
    """Pass after pass until SIGINT/SIGTERM, with /metrics /health /ready on the puller's port."""
    registry = CollectorRegistry()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with open_puller(settings, source, registry) as puller:
        telemetry = None
        fp = settings.fhir_poll
        if fp.metrics_port is not None:
            telemetry = TelemetryServer(registry)
            await telemetry.start(fp.metrics_host, fp.metrics_port)
        try:
            await puller.follow(stop)
        finally:
            if telemetry is not None:
                await telemetry.stop()
