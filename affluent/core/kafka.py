"""Kafka client factory: every producer, consumer and admin client of affluent is built here.

Centralising the configuration is how the reliability rules hold everywhere: producers are
idempotent with ``acks=all`` (a record is acknowledged only once every in-sync replica has it),
consumers never auto-commit (a record is committed only after its outputs are delivered), and the
security settings (SASL_SSL/SCRAM, mTLS) come from one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from affluent.core.errors import KafkaUnavailable
from affluent.core.settings import KafkaSettings

CLIENT_LOGGER = logging.getLogger("affluent.core.kafka.client")
# Readiness probes expect "connection refused" while a broker starts: those lines are noise, not news.
QUIET_LOGGER = logging.getLogger("affluent.core.kafka.probe")
QUIET_LOGGER.setLevel(logging.CRITICAL + 1)
QUIET_LOGGER.propagate = False


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security keys shared by every client kind (librdkafka names).

    librdkafka's own log lines are routed to Python logging instead of raw stderr, so that processes
    log in one format and operators can filter them.
    """
    conf: dict[str, Any] = {
        "logger": CLIENT_LOGGER,
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        conf["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password:
        conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_ca_location:
        conf["ssl.ca.location"] = str(kafka.ssl_ca_location)
    if kafka.ssl_certificate_location:
        conf["ssl.certificate.location"] = str(kafka.ssl_certificate_location)
    if kafka.ssl_key_location:
        conf["ssl.key.location"] = str(kafka.ssl_key_location)
    if kafka.ssl_key_password:
        conf["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    return conf


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Durable producer settings: a delivery report means every in-sync replica has the record."""
    conf = client_config(kafka)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            # Bounded: past this a delivery report fails and the sender gets a NAK instead of a hang.
            "delivery.timeout.ms": kafka.delivery_timeout_ms,
            "linger.ms": kafka.linger_ms,
            "compression.type": "lz4",
        }
    )
    conf.update(overrides)
    return conf


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """At-least-once consumer settings: offsets are committed by the caller after its work is durable."""
    conf = client_config(kafka)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    conf.update(overrides)
    return conf


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    return Producer(producer_config(kafka, **overrides))


def make_consumer(kafka: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(kafka, group_id, **overrides))


def make_admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(client_config(kafka))


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as affluent needs it; partitions/replication default to the settings when None."""

    name: str
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)

    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


def wait_for_kafka(kafka: KafkaSettings, timeout_s: float) -> int:
    """Block until the cluster answers a metadata request; returns the number of live brokers.

    A listening port is not enough: a KRaft broker accepts connections before it has joined the
    quorum, so readiness is a full metadata round-trip.
    """
    conf: dict[str, Any] = {**client_config(kafka), "logger": QUIET_LOGGER}
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout_s:.0f} s ({exc.args[0]})"
        ) from None
    return len(md.brokers)


def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Existing topics are left alone."""
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot list topics at {kafka.bootstrap_servers}: {exc.args[0]}") from None
    new: list[NewTopic] = []
    for spec in specs:
        if spec.name in existing:
            continue
        existing.add(spec.name)  # a name listed twice is created once
        config = dict(spec.config)
        if kafka.min_insync_replicas and "min.insync.replicas" not in config:
            config["min.insync.replicas"] = str(kafka.min_insync_replicas)
        new.append(
            NewTopic(
                spec.name,
                num_partitions=spec.partitions or kafka.default_partitions,
                replication_factor=spec.replication_factor or kafka.replication_factor,
                config=config,
            )
        )
    if not new:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaUnavailable(f"cannot create topic {name}: {err}") from None
    _wait_visible(admin, created, timeout_s)
    return created


def _wait_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Creation is acknowledged by the controller before every broker's metadata shows the topic with a
    leader per partition; callers that produce or describe right away need the latter."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout_s).topics
        for name in list(pending):
            md = topics.get(name)
            if md is None or md.error is not None or not md.partitions:
                continue
            if all(p.leader >= 0 for p in md.partitions.values()):
                pending.discard(name)
        if pending:
            time.sleep(0.1)
