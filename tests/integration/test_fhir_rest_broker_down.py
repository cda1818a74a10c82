"""Kafka unreachable: the FHIR door answers 503 with Retry-After and an OperationOutcome, never 2xx;
once Kafka is reachable again, the client's retry is stored, and a further resend is not stored twice.

The shared broker is never stopped: the door's producer points at a dead port ("Kafka down"), then the
same door gets a producer for the live broker ("Kafka back"). The schema registry and the idempotency
index are the real ones.
"""

from __future__ import annotations

import json
import random
import socket
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from affluent.core.settings import FhirRestSettings, KafkaSettings
from affluent.core.topics import ACK_CACHE_CONFIG, value_subject
from affluent.sim import synthetic
from connectors.fhir_rest.auth import Authenticator, token_digest
from connectors.fhir_rest.commit import Committer
from connectors.fhir_rest.metrics import FhirRestMetrics
from connectors.fhir_rest.server import FhirRestServer
from connectors.mllp.ackcache import AckCache
from connectors.raw import RawWriter
from schemas.registry import AvroCodec, load_schema
from tests.support.fhir_door import TOKEN, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


async def test_kafka_down_gives_503_then_retry_is_stored_once(live_kafka, registry):
    raw_topic, seen_topic = (
        f"it.fhirdown.raw.{uuid.uuid4().hex[:8]}",
        f"it.fhirdown.seen.{uuid.uuid4().hex[:8]}",
    )
    ensure_topics(
        live_kafka, [TopicSpec(raw_topic, partitions=1), TopicSpec(seen_topic, config=ACK_CACHE_CONFIG)]
    )
    codec = AvroCodec(registry, value_subject(raw_topic), load_schema("raw_message"), "BACKWARD")
    seen = AckCache(live_kafka, seen_topic, name="fhir-seen-test")
    seen.start()
    dead = DurableProducer(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{dead_port()}", delivery_timeout_ms=1500)
    )
    live = DurableProducer(live_kafka)
    settings = FhirRestSettings(
        port=0, metrics_port=None, retry_after_s=7, token_sha256={token_digest(TOKEN): "CHU-TEST|EDS"}
    )
    metrics_registry = CollectorRegistry()
    server = FhirRestServer(
        settings,
        Committer(dead, RawWriter(dead, codec, raw_topic), seen),
        Authenticator(settings),
        FhirRestMetrics(metrics_registry),
    )
    port = await server.start()
    obs = synthetic.fhir_observation(
        random.Random(5),
        synthetic.patient(random.Random(5), 1),
        f"obs-{uuid.uuid4().hex[:10]}",
        datetime.now(UTC),
    )
    body = json.dumps(obs, ensure_ascii=False).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    url = f"http://127.0.0.1:{port}/fhir/Observation"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "7"
                outcome = await response.json(content_type=None)
                assert (
                    outcome["resourceType"] == "OperationOutcome"
                    and outcome["issue"][0]["code"] == "transient"
                )
            server.committer = Committer(live, RawWriter(live, codec, raw_topic), seen)  # Kafka is back
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 201
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200  # the resend is answered from the index, not stored again
    finally:
        await server.stop()
        dead.close(timeout_s=1)
        live.close()
        seen.stop()
    records = read_topic(live_kafka, registry, raw_topic)
    assert [r["message_id"] for r in records] == [f"Observation/{obs['id']}/_history/1"]
    assert (
        metrics_registry.get_sample_value(
            "affluent_fhir_rest_records_total",
            {"resource_type": "Observation", "outcome": "kafka_unavailable"},
        )
        == 1
    )
