"""Test helpers for the FHIR REST door: credentials (a static token, an EC JWT issuer) and reading back."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from confluent_kafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric import ec

from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings
from schemas.registry import Registry, decode

TOKEN = "test-token-not-a-secret-" + "0" * 8  # obviously a test credential
ISSUER = "https://idp.test/realms/affluent"
AUDIENCE = "affluent-fhir"


class JwtIssuer:
    """An ES256 token issuer whose public key set is written to a JWKS file."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "test-key-1", "use": "sig", "alg": "ES256"})
        folder.mkdir(parents=True, exist_ok=True)
        self.jwks_file = folder / "jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")

    def token(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": "test-key-1"})


def read_topic(
    kafka: KafkaSettings, registry: Registry, topic: str, settle_s: float = 1.5
) -> list[dict[str, Any]]:
    """Every record of ``topic`` (all partitions), decoded; waits ``settle_s`` after the last one."""
    consumer = make_consumer(kafka, group_id=f"test-{uuid.uuid4().hex[:8]}")
    md = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    out: list[dict[str, Any]] = []
    quiet_until = time.monotonic() + settle_s + 2
    try:
        while time.monotonic() < quiet_until:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            record = decode(registry, msg.value())
            record["_kafka"] = (msg.partition(), msg.offset(), msg.value(), msg.key())
            out.append(record)
            quiet_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return out
