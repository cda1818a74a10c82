"""Command-line entry points of the opposition service (``affluent opposition …``).

Every command goes through :class:`OppositionService`, so an objection typed at the console and one
posted to the HTTP endpoint have the same effect: registry entries, then national retractions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from affluent.core.auth import StaticTokens
from affluent.core.compacted import CompactedView
from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.lifecycle import wait_for_signal
from affluent.core.settings import Settings
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
from schemas.audit import AuditChannel
from schemas.readiness import dependencies
from streams.opposition.http import OppositionEndpoint
from streams.opposition.objection import Objection
from streams.opposition.service import OppositionMetrics, OppositionService, Registered
from streams.pseudonymize.keys import KeyProvider

log = logging.getLogger(__name__)

CLI_PRINCIPAL = "affluent-cli"
T = TypeVar("T")


def build_service(
    settings: Settings, keys: KeyProvider | None = None, metrics_registry: CollectorRegistry | None = None
) -> OppositionService:
    from streams.pseudonymize.worker import build_feeds, load_keys

    keys = keys if keys is not None else load_keys()
    return OppositionService(
        settings, keys, build_feeds(keys), OppositionMetrics(metrics_registry or CollectorRegistry())
    )


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run`` that also works when called from code already inside an event loop (an async
    test, a notebook): the coroutine then runs on a loop of its own in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def register(
    settings: Settings, objection: Objection, keys: KeyProvider | None = None, who: str = CLI_PRINCIPAL
) -> Registered:
    """``who``: the OS user at the console, for the audit trail (the retractions say ``affluent-cli``)."""

    async def go() -> Registered:
        service = build_service(settings, keys)
        await service.start(with_view=False)
        try:
            return await service.register(objection, CLI_PRINCIPAL, AuditChannel.CLI, who)
        finally:
            await service.stop()

    return _run(go)


def withdraw(
    settings: Settings, objection: Objection, keys: KeyProvider | None = None, who: str = CLI_PRINCIPAL
) -> int:
    async def go() -> int:
        service = build_service(settings, keys)
        await service.start(with_view=False)
        try:
            return await service.withdraw(objection, CLI_PRINCIPAL, AuditChannel.CLI, who)
        finally:
            await service.stop()

    return _run(go)


def count(settings: Settings) -> int:
    """The number of entries in the registry (keyed hashes; one per identity form of each patient)."""
    wait_for_kafka(settings.kafka, 30)
    ensure_topics(settings.kafka, [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG)])
    view = CompactedView(settings.kafka, CONTROL_OPPOSITION, name="opposition-list")
    view.start()
    try:
        return len(view)
    finally:
        view.stop()


def serve(settings: Settings, keys: KeyProvider | None = None) -> None:
    """Run the HTTP endpoint until SIGINT/SIGTERM. Refuses to start without tokens or keys."""
    tokens = StaticTokens(settings.opposition.tokens, origin="AFFLUENT_OPPOSITION__TOKENS")
    metrics_registry = CollectorRegistry()
    service = build_service(settings, keys, metrics_registry)

    async def main() -> None:
        await service.start()
        ready = dependencies(settings.kafka, settings.registry)
        endpoint = OppositionEndpoint(service, tokens, metrics_registry, ready)
        port = await endpoint.start(settings.opposition.host, settings.opposition.port)
        log.warning("opposition endpoint listening on %s:%d", settings.opposition.host, port)
        try:
            await wait_for_signal()
        finally:
            await endpoint.stop()
            await service.stop()

    asyncio.run(main())
