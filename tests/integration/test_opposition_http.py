"""The objection endpoint's answers when Kafka does not confirm, and for oversized or malformed bodies.

The producer is a real one pointed at a port where no broker listens: the registration must come back
503 with Retry-After (the objection is not in force), never a false 201.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from affluent.core.auth import StaticTokens, new_token
from affluent.core.producer import DurableProducer
from affluent.core.settings import KafkaSettings, Settings
from streams.opposition.http import MAX_BODY, OppositionEndpoint
from streams.opposition.service import OppositionMetrics, OppositionService
from streams.pseudonymize.worker import build_feeds
from tests.support import canonical_samples as cs
from tests.support.pipeline import free_port

pytestmark = [pytest.mark.integration]


async def test_kafka_not_confirming_is_a_503_and_bad_bodies_are_refused() -> None:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1000)
    keys = cs.load_test_keys()
    feeds = build_feeds(keys)
    registry = CollectorRegistry()
    service = OppositionService(Settings(kafka=dead), keys, feeds, OppositionMetrics(registry))
    service.headers = {t: b"\0\0\0\0\1" for f in feeds for t in f.topics().values()}
    service.producer = DurableProducer(dead)
    token, digest = new_token()
    endpoint = OppositionEndpoint(service, StaticTokens({"dpo": digest}), registry)
    port = await endpoint.start("127.0.0.1", 0)
    auth = {"Authorization": f"Bearer {token}"}
    body = {"ipp": cs.IPP, "authority": cs.IPP_AUTHORITY_OID}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answer = await client.post("/opposition", json=body, headers=auth)
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "5"
            assert cs.IPP not in answer.text
            withdraw = await client.post("/opposition/withdraw", json=body, headers=auth)
            assert withdraw.status_code == 503

            huge = {"ipp": "x" * (MAX_BODY + 10), "authority": cs.IPP_AUTHORITY_OID}
            assert (await client.post("/opposition", json=huge, headers=auth)).status_code == 413
            broken = await client.post(
                "/opposition", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
            )
            assert broken.status_code == 400 and broken.json()["error"] == "invalid_objection"
            assert (await client.get("/health")).status_code == 200
            metrics = (await client.get("/metrics")).text
    finally:
        await endpoint.stop()
        await service.stop()
    assert 'affluent_opposition_requests_total{action="register",outcome="kafka_unavailable"} 1.0' in metrics
    assert cs.IPP not in metrics
