"""``affluent demo``: show a working platform in a few seconds.

For now the demo proves the foundation: it writes a registered Avro record (a synthetic HL7 ADT
message as the MLLP door stores it) to the raw topic with ``acks=all``, reads it back from the exact
offset the broker acknowledged, decodes it through the registry and compares it field by field.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from affluent.errors import AffluentError
from affluent.kafka import ensure_topics, make_consumer, make_producer, wait_for_kafka
from affluent.settings import Settings
from affluent.topics import CORE_TOPICS, INGEST_HL7V2_RAW, value_subject
from schemas.registry import AvroCodec, Registry, load_schema

SYNTHETIC_ADT = (
    "MSH|^~\\&|DEMO-PAS|DEMO-HOSP|AFFLUENT|HUB|20261124101500+0100||ADT^A01^ADT_A01|DEMO0001|P|2.5|||||FRA|8859/1\r"
    "EVN||20261124101500+0100\r"
    "PID|||DEMO-IPP-1^^^DEMO-HOSP&1.2.250.1.71.4.2.7&ISO^PI||SYNTHÉTIQUE^Zoé^^^^^L||19800101|F\r"
    "PV1||I|CARDIO^101^1\r"
).encode("latin-1")


def demo_record() -> dict[str, Any]:
    return {
        "raw_id": hashlib.sha256(b"hl7v2|DEMO-HOSP|DEMO-PAS|DEMO0001").hexdigest(),
        "protocol": "hl7v2",
        "connector": "demo",
        "source_facility": "DEMO-HOSP",
        "source_application": "DEMO-PAS",
        "message_id": "DEMO0001",
        "message_type": "ADT^A01",
        "peer": None,
        "received_at": datetime.now(UTC).replace(microsecond=0),
        "content_type": "x-application/hl7-v2+er7",
        "declared_charset": "8859/1",
        "charset_mismatch": False,
        "payload": SYNTHETIC_ADT,
        "attributes": {"demo": "true"},
    }


def run_demo(settings: Settings, out: Callable[[str], None]) -> int:
    brokers = wait_for_kafka(settings.kafka, timeout_s=10)
    out(f"Kafka: {brokers} broker(s) at {settings.kafka.bootstrap_servers}")
    created = ensure_topics(settings.kafka, CORE_TOPICS)
    if created:
        out(f"created topics: {', '.join(created)}")
    registry = Registry(settings.registry)
    codec = AvroCodec(registry, value_subject(INGEST_HL7V2_RAW), load_schema("raw_message"), "BACKWARD")
    out(f"registry: subject {codec.subject} -> schema id {codec.schema_id} ({registry.url})")

    record = demo_record()
    value = codec.encode(record)
    producer = make_producer(settings.kafka)
    reports: list[Message] = []
    started = time.perf_counter()
    producer.produce(
        INGEST_HL7V2_RAW,
        key=b"DEMO-HOSP|DEMO-PAS",
        value=value,
        on_delivery=lambda err, msg: reports.append(msg) if err is None else _raise(err),
    )
    producer.flush(settings.kafka.delivery_timeout_ms / 1000)
    if not reports:
        raise AffluentError("Kafka did not acknowledge the demo record")
    acked = reports[0]
    ack_ms = (time.perf_counter() - started) * 1000
    out(
        f"produced {len(value)} bytes (acks=all) to {acked.topic()}[{acked.partition()}]@{acked.offset()} "
        f"in {ack_ms:.1f} ms"
    )

    consumer = make_consumer(settings.kafka, group_id=f"affluent-demo-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(INGEST_HL7V2_RAW, acked.partition() or 0, acked.offset() or 0)])
        msg = consumer.poll(10)
    finally:
        consumer.close()
    if msg is None or msg.error() is not None:
        raise AffluentError("could not read the demo record back from Kafka")
    decoded = registry_decode(codec, msg.value())
    same = decoded == record
    out(f"consumed and decoded through the registry: identical to what was sent: {same}")
    out(f"subjects in the registry: {', '.join(sorted(registry.subjects()))}")
    return 0 if same else 1


def registry_decode(codec: AvroCodec, value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise AffluentError("the demo record came back empty")
    return codec.decode(value)


def _raise(err: KafkaError) -> None:
    raise AffluentError(f"Kafka refused the demo record: {err.str()}")
