"""The pseudonymize worker: the stage shell (streams/app.py) over ``canonical.*``, for :class:`Pseudonymizer`.

Same delivery discipline as the normalize worker: batches in order per partition, the national outputs
of a batch confirmed by Kafka (``acks=all``) before the batch's input offsets are stored for commit. A
crash replays inputs; national event ids are deterministic per key, so replays collapse downstream.

Keys come from ``AFFLUENT_PSEUDO_KEY__<RING>`` variables, over the file named by
``AFFLUENT_PSEUDO_KEY_FILE``; the worker refuses to start without a key for every destination and for
the opposition ring. The opposition registry (``control.opposition``) is read to its end before the
agent starts, then tailed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from affluent.core.compacted import CompactedView
from affluent.core.errors import ConfigError
from affluent.core.kafka import TopicSpec, ensure_topics, wait_for_kafka
from affluent.core.settings import Settings, StreamsSettings
from affluent.core.tls import check_key_file
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
from schemas.catalog import CANONICAL_TOPICS, DLQ_PSEUDONYMIZE, NATIONAL_TOPICS, cohort_topics_of
from schemas.readiness import dependencies
from schemas.registry import Registry
from streams.app import StageWorker, run_until_signalled
from streams.contract import StageSpec
from streams.pseudonymize.keys import (
    FirstOf,
    KeyConfigError,
    KeyProvider,
    env_provider,
    file_provider,
    require_key,
)
from streams.pseudonymize.policy import load_policy
from streams.pseudonymize.pseudonym import OPPOSITION_KEYRING
from streams.pseudonymize.stage import PseudonymizeMetrics, Pseudonymizer
from streams.pseudonymize.transform import Feed

log = logging.getLogger(__name__)

DEFAULT_GROUP = StreamsSettings.model_fields["pseudonymize_group"].default
DEFAULT_METRICS_PORT = StreamsSettings.model_fields["pseudonymize_metrics_port"].default
KEY_FILE_ENV = "AFFLUENT_PSEUDO_KEY_FILE"
DESTINATIONS = ("hdh", "inca")


def load_keys(environ: dict[str, str] | None = None) -> KeyProvider:
    """Environment keys over the key file; refuses to go on without the opposition ring's key."""
    env = dict(os.environ if environ is None else environ)
    providers: list[KeyProvider] = [env_provider(env)]
    key_file = env.get(KEY_FILE_ENV)
    if key_file:
        check_key_file(Path(key_file), KEY_FILE_ENV)  # a key file others can read has leaked already
        providers.append(file_provider(key_file))
    keys = FirstOf(*providers)
    try:
        require_key(keys, OPPOSITION_KEYRING)
    except ConfigError:
        raise KeyConfigError(
            "no pseudonymization keys: set AFFLUENT_PSEUDO_KEY_FILE to a key file or "
            "AFFLUENT_PSEUDO_KEY__<RING> variables (rings: hdh, inca, opposition); "
            "see docs/pseudonymization.md, Keys"
        ) from None
    return keys


def build_feeds(keys: KeyProvider, destinations: tuple[str, ...] = DESTINATIONS) -> list[Feed]:
    """One feed per destination; a destination without a key stops the start with its name."""
    return [Feed(load_policy(name), keys) for name in destinations]


def worker_topics(group: str, scoped: frozenset[str] = frozenset()) -> list[TopicSpec]:
    sources = (*CANONICAL_TOPICS, *cohort_topics_of(sorted(scoped)))
    return [
        *(TopicSpec(t) for t in (*sources, *NATIONAL_TOPICS, DLQ_PSEUDONYMIZE)),
        TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG),
    ]


def cohort_scoped(settings: Settings) -> frozenset[str]:
    """The destinations that receive cohort members only: those the cohort files name (the cohort stage,
    ``affluent cohort``, writes their records to ``cohort.<destination>.*``)."""
    from streams.cohort.definition import load_cohorts, scoped_destinations

    return scoped_destinations(load_cohorts(DESTINATIONS, settings.streams.cohorts_dir))


def build_worker(
    settings: Settings,
    metrics_registry: CollectorRegistry | None = None,
    keys: KeyProvider | None = None,
) -> tuple[StageWorker, CompactedView]:
    s = settings
    group = s.streams.pseudonymize_group
    keys = keys if keys is not None else load_keys()
    feeds = build_feeds(keys)
    scoped = cohort_scoped(s)
    wait_for_kafka(s.kafka, 30)
    ensure_topics(s.kafka, worker_topics(group, scoped))
    opposition = CompactedView(s.kafka, CONTROL_OPPOSITION, name="opposition")
    opposition.start()
    metrics_registry = metrics_registry or CollectorRegistry()
    metrics = PseudonymizeMetrics(metrics_registry)
    metrics.opposition_entries.set_function(lambda: float(len(opposition)))
    registry = Registry(s.registry)
    registry.wait_until_reachable()  # a registry outage delays the start, it does not crash-loop it
    pseudonymizer = Pseudonymizer(registry, feeds, opposition, keys, metrics, scoped=scoped)
    worker = StageWorker(
        StageSpec(group, (*CANONICAL_TOPICS, *cohort_topics_of(sorted(scoped))), pseudonymizer.process),
        s.kafka,
        s.streams,
        metrics_registry,
        s.streams.pseudonymize_metrics_port,
        ready=dependencies(s.kafka, s.registry),
    )
    return worker, opposition


def current_key_ids(keys: KeyProvider, destinations: tuple[str, ...] = DESTINATIONS) -> dict[str, str]:
    """Ring → id of its current key, for the rings a worker uses (each destination's and opposition's).
    Ids only: a key id prefixes every pseudonym, it is no secret."""
    rings = [load_policy(name).key_name for name in destinations] + [OPPOSITION_KEYRING]
    return {ring: require_key(keys, ring).key_id for ring in rings}  # a missing one: the feed's own refusal


def run(settings: Settings, keys: KeyProvider | None = None) -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM (the batch in hand finishes, then commit).
    Keys are read once, at start (``load_keys`` unless given): a rotation takes effect at a restart."""
    worker, opposition = build_worker(settings, keys=keys)
    run_until_signalled(worker, on_stop=[opposition.stop])
