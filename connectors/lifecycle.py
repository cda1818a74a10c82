"""What every door's service shares: readiness (can Kafka be reached?) and running until SIGINT/SIGTERM.

Doors differ in what they start; how they report readiness and how they shut down must not: a door
stops accepting, finishes in-flight work and flushes its producer on either signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol

from affluent.kafka import wait_for_kafka
from affluent.settings import KafkaSettings


class Door(Protocol):
    async def start(self) -> int: ...

    async def stop(self) -> None: ...


async def kafka_ready(kafka: KafkaSettings) -> bool:
    """``/ready``: true when the brokers answer a metadata request within 2 s."""
    try:
        await asyncio.to_thread(wait_for_kafka, kafka, 2)
    except Exception:
        return False
    return True


async def run_until_signalled(door: Door, banner: Callable[[int], str]) -> None:
    """Start ``door``, print ``banner(port)``, and stop it cleanly on SIGINT or SIGTERM."""
    port = await door.start()
    print(banner(port), flush=True)  # noqa: T201
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await door.stop()
