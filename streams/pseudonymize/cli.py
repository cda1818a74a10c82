"""Command-line entry points of the pseudonymize stage, for ``affluent/cli.py`` to wire in.

- ``run_worker(settings)``: the stage worker (``affluent pseudonymize``);
- ``opposition_add`` / ``opposition_remove`` / ``opposition_list``: kept for callers of this module; they
  go through the opposition service (streams/opposition), like ``affluent opposition …``.

``main()`` runs the worker with settings from the environment (``python -c "from
streams.pseudonymize.cli import main; main()"``), as the integration tests do.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from affluent.core.errors import AffluentError, ConfigError
from affluent.core.kafka import make_consumer, wait_for_kafka
from affluent.core.settings import Settings, load_settings
from schemas.registry import Registry, decode, load_schema
from streams.opposition.cli import count, register, withdraw
from streams.opposition.objection import Objection, registry_entries
from streams.pseudonymize.keys import KeyProvider
from streams.pseudonymize.risk import (
    DEFAULT_K,
    DEFAULT_QUASI_IDENTIFIERS,
    RiskReport,
    assess,
    check_paths,
    schema_paths,
)


def run_worker(settings: Settings) -> None:
    from streams.pseudonymize.worker import run

    run(settings)


def opposition_entries(
    keys: KeyProvider, ins: str | None = None, ipp: str | None = None, authority: str | None = None
) -> tuple[str, ...]:
    """The registry keys for an objection given by INS (NIR matricule) and/or IPP with its authority."""
    return tuple(registry_entries(keys, Objection(ins=ins, ipp=ipp, authority=authority)))


def opposition_add(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Register an objection (registry entries, then national retractions); returns the entries written."""
    return register(settings, Objection(ins=ins, ipp=ipp, authority=authority), keys).entries


def opposition_remove(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Withdraw an objection: the patient's *new* events flow again (what was retracted stays retracted)."""
    return withdraw(settings, Objection(ins=ins, ipp=ipp, authority=authority), keys)


def opposition_list(settings: Settings) -> int:
    return count(settings)


def risk_report(
    settings: Settings,
    destination: str,
    k: int = DEFAULT_K,
    quasi_identifiers: Sequence[str] | None = None,
    since_hours: float | None = None,
) -> RiskReport:
    """Read the destination's patient topic (all of it, or the last ``since_hours``) up to its current
    end and assess its k-anonymity. Records are decoded with the registry, in memory only."""
    from streams.pseudonymize.policy import load_policy

    policy = load_policy(destination)
    plan = policy.plans.get("patient")
    if plan is None:
        raise ConfigError(f"destination {destination} receives no patient records")
    paths = tuple(quasi_identifiers or DEFAULT_QUASI_IDENTIFIERS.get(destination, ()))
    if not paths:
        raise ConfigError(f"name the quasi-identifiers of destination {destination} (--quasi)")
    check_paths(schema_paths(json.loads(load_schema(policy.schema_name_for("patient")))), paths)
    registry = Registry(settings.registry)
    records = read_window(settings, plan.topic, since_hours)
    return assess((decode(registry, value) for value in records), destination, paths, k)


def read_window(settings: Settings, topic: str, since_hours: float | None) -> list[bytes]:
    """Values of ``topic`` from the start (or ``since_hours`` ago) to the end it had when called."""
    wait_for_kafka(settings.kafka, 30)
    consumer = make_consumer(settings.kafka, group_id=f"affluent-risk-{uuid.uuid4().hex[:8]}")
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise ConfigError(f"topic {topic} does not exist on this cluster")
        partitions = [TopicPartition(topic, p) for p in sorted(md.partitions)]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        if since_hours is not None:
            since_ms = int((time.time() - since_hours * 3600) * 1000)
            starts = consumer.offsets_for_times(
                [TopicPartition(topic, tp.partition, since_ms) for tp in partitions], timeout=10
            )
        else:
            starts = [TopicPartition(topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
        remaining = {tp.partition for tp in starts if ends[tp.partition] > 0 and tp.offset != OFFSET_END}
        consumer.assign(starts)
        values: list[bytes] = []
        deadline = time.monotonic() + 300
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            value = msg.value()
            if value is not None:
                values.append(value)
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                remaining.discard(msg.partition() or 0)
        return values
    finally:
        consumer.close()


def main() -> None:
    """Run the pseudonymize worker (settings and keys from the environment)."""
    logging.basicConfig(
        level=os.environ.get("AFFLUENT_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_worker(load_settings())
    except AffluentError as exc:
        sys.stderr.write(f"affluent: error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
