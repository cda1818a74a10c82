"""``affluent demo``: the main job, shown end to end on the local stack with synthetic patients.

1. Foundation: a registered Avro record is written with ``acks=all`` and read back through the registry.
2. Pipeline: a synthetic hospital sends HL7 v2 ADT and ORU messages over MLLP to the door; a normalize
   worker (a real ``affluent normalize`` process) turns the raw records into canonical events.
3. Accounting: every message the hospital saw acknowledged is found downstream — as canonical events or
   as a dead letter with its reason. The demo fails (exit 1) if one is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from affluent.accounting import collect
from affluent.errors import AffluentError
from affluent.kafka import ensure_topics, make_consumer, make_producer, wait_for_kafka
from affluent.settings import Settings
from affluent.synthetic import messages
from affluent.topics import CORE_TOPICS, INGEST_HL7V2_RAW, value_subject
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, register_all
from schemas.registry import AvroCodec, Registry, load_schema

Out = Callable[[str], None]

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


def run_demo(settings: Settings, out: Out, count: int = 200, senders: int = 4) -> int:
    brokers = wait_for_kafka(settings.kafka, timeout_s=10)
    out(f"Kafka: {brokers} broker(s) at {settings.kafka.bootstrap_servers}")
    ensure_topics(settings.kafka, CORE_TOPICS)
    registry = Registry(settings.registry)
    registered = register_all(registry)
    out(f"Registry: {len(registered)} subjects registered with their compatibility rules ({registry.url})")
    if not round_trip(settings, registry, out):
        return 1
    return asyncio.run(pipeline(settings, registry, out, count, senders))


def round_trip(settings: Settings, registry: Registry, out: Out) -> bool:
    codec = AvroCodec(registry, value_subject(INGEST_HL7V2_RAW), load_schema("raw_message"), "BACKWARD")
    record = demo_record()
    producer = make_producer(settings.kafka)
    reports: list[Message] = []
    started = time.perf_counter()
    producer.produce(
        INGEST_HL7V2_RAW,
        key=b"DEMO-HOSP|DEMO-PAS",
        value=codec.encode(record),
        on_delivery=lambda err, msg: reports.append(msg) if err is None else _raise(err),
    )
    producer.flush(settings.kafka.delivery_timeout_ms / 1000)
    if not reports:
        raise AffluentError("Kafka did not acknowledge the demo record")
    acked = reports[0]
    ack_ms = (time.perf_counter() - started) * 1000
    consumer = make_consumer(settings.kafka, group_id=f"affluent-demo-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(INGEST_HL7V2_RAW, acked.partition() or 0, acked.offset() or 0)])
        msg = consumer.poll(10)
    finally:
        consumer.close()
    if msg is None or msg.error() is not None or msg.value() is None:
        raise AffluentError("could not read the demo record back from Kafka")
    same = codec.decode(msg.value() or b"") == record
    out(
        f"Round trip: Avro record (schema id {codec.schema_id}) acked by Kafka in {ack_ms:.1f} ms at "
        f"{INGEST_HL7V2_RAW}[{acked.partition()}]@{acked.offset()}, read back identical: {same}"
    )
    return same


async def pipeline(settings: Settings, registry: Registry, out: Out, count: int, senders: int) -> int:
    from connectors.mllp.client import send_all
    from connectors.mllp.intake import Accepted, IntakePolicy, assess
    from connectors.mllp.service import MllpService

    metrics_port = _free_port()
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the event loop does any work
        [sys.executable, "-m", "affluent.cli", "normalize"],
        env={**os.environ, "AFFLUENT_STREAMS__METRICS_PORT": str(metrics_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    door_settings = settings.model_copy(
        update={"mllp": settings.mllp.model_copy(update={"port": 0, "metrics_port": None})}
    )
    door = MllpService(door_settings, CollectorRegistry())
    try:
        port = await door.start(with_telemetry=False)
        out(f"MLLP door on 127.0.0.1:{port}; normalize worker pid {worker.pid} (metrics :{metrics_port})")
        batch = messages(count, seed=int(time.time()))
        started = time.perf_counter()
        codes = await send_all("127.0.0.1", port, batch, senders)
        elapsed = time.perf_counter() - started
        acked = [m for m, c in zip(batch, codes, strict=True) if c in ("AA", "CA")]
        out(
            f"Hospital sent {len(batch)} HL7 messages over {senders} MLLP connections in {elapsed:.1f} s: "
            f"{Counter(codes).most_common()}"
        )
        raw_ids = set()
        for payload in acked:
            outcome = assess(payload, IntakePolicy())
            if isinstance(outcome, Accepted):
                raw_ids.add(outcome.raw_id)

        def progress(accounted: int, records: int) -> None:
            if records % 100 == 0:
                out(f"  … {accounted}/{len(raw_ids)} acknowledged messages found downstream ({records} rec.)")

        found = await asyncio.to_thread(
            collect,
            settings.kafka,
            registry,
            [*CANONICAL_TOPICS, DLQ_NORMALIZE],
            raw_ids,
            120.0,
            None,
            3.0,
            progress,
        )
    finally:
        await door.stop()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return report(found, raw_ids, out)


def report(found: dict[str, list[dict[str, Any]]], raw_ids: set[str], out: Out) -> int:
    from affluent.accounting import raw_id_of

    out("")
    out("Accounting")
    out(f"  {'acknowledged by the door':<44}{len(raw_ids):>8}")
    reached: set[str] = set()
    for topic in sorted(found):
        if topic.startswith("canonical."):
            out(f"  {topic:<44}{len(found[topic]):>8} events")
            reached |= {raw_id_of(r) or "" for r in found[topic]}
    dead = found.get(DLQ_NORMALIZE, [])
    reasons = Counter(str(r["reason_code"]) for r in dead)
    out(f"  {DLQ_NORMALIZE:<44}{len(dead):>8} dead letters {dict(reasons) if reasons else ''}")
    reached |= {raw_id_of(r) or "" for r in dead}
    missing = raw_ids - reached
    out(f"  {'acknowledged but found nowhere':<44}{len(missing):>8}")
    out("")
    out("Canonical topics hold Avro records registered at http://127.0.0.1:8081/apis/ccompat/v7.")
    return 0 if not missing else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise(err: KafkaError) -> None:
    raise AffluentError(f"Kafka refused the demo record: {err.str()}")
