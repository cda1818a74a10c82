"""How every long-running affluent server stops: on SIGINT/SIGTERM, in one order.

Doors and the opposition endpoint differ in what they start; how they shut down must not: a server
stops accepting, finishes in-flight work and flushes its producer on either signal. What a door does
before its port opens lives one floor up, in :mod:`connectors.runtime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol

from affluent.core.compacted import CompactedView
from affluent.core.producer import DurableProducer
from affluent.core.telemetry import TelemetryServer


class Door(Protocol):
    async def start(self) -> int: ...

    async def stop(self) -> None: ...


class Listener(Protocol):
    async def stop(self) -> None: ...


async def shut_down(
    listener: Listener | None,
    telemetry: TelemetryServer | None,
    producer: DurableProducer | None,
    view: CompactedView | None,
) -> None:
    """In this order: stop accepting and finish in-flight work, stop telemetry, flush what was
    produced, stop tailing the door's compacted view (its last writes are in Kafka by then)."""
    if listener is not None:
        await listener.stop()
    if telemetry is not None:
        await telemetry.stop()
    if producer is not None:
        await asyncio.to_thread(producer.close)
    if view is not None:
        await asyncio.to_thread(view.stop)


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM (what every long-running affluent server waits for)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_until_signalled(door: Door, banner: Callable[[int], str]) -> None:
    """Start ``door``, print ``banner(port)``, and stop it cleanly on SIGINT or SIGTERM."""
    port = await door.start()
    print(banner(port), flush=True)  # noqa: T201
    try:
        await wait_for_signal()
    finally:
        await door.stop()
