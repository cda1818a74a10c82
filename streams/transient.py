"""Waiting out a registry outage inside a stage, without dead-lettering and without committing.

A stage's ``process`` raises :class:`RegistryUnavailable` only when it needs a writer schema it has not
cached and the registry is away: the record itself is fine. The batch is then held — none of its
offsets is stored, so nothing past them is committed — and the same record is tried again with a
back-off. The consumer's heartbeats (librdkafka's own thread) and /metrics, /ready (the telemetry
thread) stay alive meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from affluent.core.errors import RegistryUnavailable

log = logging.getLogger(__name__)

PAUSE_MAX_S = 10.0


def when_registry_back(
    process: Callable[[bytes | None, str, int, int], Sequence[Any]],
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    group: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Sequence[Any]:
    """``process`` of one record, tried again until the registry answers (no bound: a stalled stage
    shows as consumer lag and a failing /ready, and resumes by itself)."""
    pause = 0.5
    while True:
        log.warning("%s: schema registry unavailable; holding the batch, retrying in %.1f s", group, pause)
        sleep(pause)
        pause = min(PAUSE_MAX_S, pause * 2)
        try:
            return process(value, topic, partition, offset)
        except RegistryUnavailable:
            continue
