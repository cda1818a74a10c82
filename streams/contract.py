"""The stage contract: a stage is a pure ``process(value, topic, partition, offset) -> outputs``.

Normalize and pseudonymize (and any stage to come) meet their shell only here: the shell
(:mod:`streams.app`) consumes, calls ``process`` and produces what it returns, so a stage's decisions
are tested without Kafka and the shell's durability rule (outputs confirmed before inputs count as
done) holds for every stage alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.registry import AvroCodec


@dataclass(frozen=True, slots=True)
class Output:
    """One record a stage asks its shell to produce."""

    topic: str
    key: bytes | None
    value: bytes | None


Process = Callable[[bytes | None, str, int, int], Sequence[Output]]


@dataclass(frozen=True, slots=True)
class StageSpec:
    """What makes one stage: its consumer group, what it reads, and the function it applies."""

    group: str
    sources: tuple[str, ...]
    process: Process


def dead_letter_output(codec: AvroCodec, topic: str, record: dict[str, Any]) -> Output:
    """A dead letter as an output, keyed by its source (facility|application) like the raw topics, so
    an operator reads one sender's dead letters in order."""
    source: Mapping[str, Any] = record["source"]
    key = f"{source['facility']}|{source['application']}".encode()
    return Output(topic, key, codec.encode(record))
