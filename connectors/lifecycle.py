"""How a door process lives: readiness is Kafka answering, and it runs until SIGINT/SIGTERM.

Every door (MLLP, devices, ...) has the same outer life; keeping it here means one place decides what
"ready" and a clean shutdown mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from affluent.kafka import wait_for_kafka
from affluent.settings import KafkaSettings


async def kafka_ready(kafka: KafkaSettings) -> bool:
    """For ``/ready``: Kafka answers a metadata request within 2 s."""
    try:
        await asyncio.to_thread(wait_for_kafka, kafka, 2)
    except Exception:
        return False
    return True


async def run_until_signal(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGINT/SIGTERM, then ``stop`` (which drains in-flight work and flushes the producer)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await stop()
