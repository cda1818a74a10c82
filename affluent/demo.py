"""``affluent demo``: the main job, shown end to end on the local stack with synthetic patients.

1. Foundation: a registered Avro record is written with ``acks=all`` and read back through the registry.
2. Pipeline: a synthetic hospital sends HL7 v2 ADT and ORU messages over MLLP to the door; a normalize
   worker (a real ``affluent normalize`` process) turns the raw records into canonical events.
3. Accounting: every message the hospital saw acknowledged is found downstream — as canonical events or
   as a dead letter with its reason. The demo fails (exit 1) if one is missing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from affluent.accounting import collect
from affluent.errors import AffluentError
from affluent.kafka import ensure_topics, make_consumer, make_producer, wait_for_kafka
from affluent.settings import Settings
from affluent.synthetic import HOSPITAL_OID, cohort, messages
from affluent.topics import CORE_TOPICS, INGEST_HL7V2_RAW, value_subject
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, NATIONAL_TOPICS, register_all
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


def demo_keys(settings: Settings) -> Path:
    """The key file of the national feed: AFFLUENT_PSEUDO_KEY_FILE when set, else random local keys.

    The demo's keys are generated on this machine into the git-ignored state folder (never the test
    keys, never in the repository); a real deployment provides its own through a key provider.
    """
    configured = os.environ.get("AFFLUENT_PSEUDO_KEY_FILE")
    if configured:
        return Path(configured)
    path = settings.stack.state_dir / "demo-keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rings = {
            ring: [
                {
                    "key_id": f"DEMO-LOCAL-{ring}-1",
                    "secret": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "active": True,
                }
            ]
            for ring in ("hdh", "inca", "opposition")
        }
        path.write_text(json.dumps(rings, indent=2))
        path.chmod(0o600)
    return path


def _worker(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "affluent.cli", command],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def pipeline(settings: Settings, registry: Registry, out: Out, count: int, senders: int) -> int:
    from connectors.mllp.client import send_all
    from connectors.mllp.intake import Accepted, IntakePolicy, assess
    from connectors.mllp.service import MllpService
    from streams.pseudonymize.cli import opposition_add, opposition_entries
    from streams.pseudonymize.keys import file_provider

    key_file = demo_keys(settings)
    keys = file_provider(key_file)
    seed = int(time.time())
    objecting = cohort(seed, 50)[:2]
    opposed: set[str] = set()
    for person in objecting:
        opposition_add(settings, ipp=person.ipp, authority=HOSPITAL_OID, keys=keys)
        opposed.update(opposition_entries(keys, ipp=person.ipp, authority=HOSPITAL_OID))
    out(f"Opposition: {len(objecting)} synthetic patients objected before their first event (hashes stored)")

    normalize_port, national_port = _free_port(), _free_port()
    workers = [
        _worker("normalize", {"AFFLUENT_STREAMS__METRICS_PORT": str(normalize_port)}),
        _worker(
            "pseudonymize",
            {
                "AFFLUENT_PSEUDO_KEY_FILE": str(key_file),
                "AFFLUENT_PSEUDONYMIZE_METRICS_PORT": str(national_port),
            },
        ),
    ]
    door_settings = settings.model_copy(
        update={"mllp": settings.mllp.model_copy(update={"port": 0, "metrics_port": None})}
    )
    door = MllpService(door_settings, CollectorRegistry())
    try:
        port = await door.start(with_telemetry=False)
        out(
            f"MLLP door on 127.0.0.1:{port}; normalize worker (metrics :{normalize_port}); "
            f"pseudonymize worker (metrics :{national_port})"
        )
        batch = messages(count, seed=seed)
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
            if records % 200 == 0:
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
        expected, drops = expected_national(found, keys, opposed)
        out(f"  … waiting for {len(expected)} national records")
        national = await asyncio.to_thread(
            collect,
            settings.kafka,
            registry,
            sorted(NATIONAL_TOPICS),
            set(expected),
            120.0,
            len(expected),
            3.0,
            None,
            lambda record: str(record["envelope"]["event_id"]),
        )
    finally:
        await door.stop()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return report(found, raw_ids, national, expected, drops, out)


def expected_national(
    found: dict[str, list[dict[str, Any]]], keys: Any, opposed: set[str]
) -> tuple[dict[str, str], Counter[str]]:
    """What the national feed must produce for these canonical events (national event id -> topic),
    and the opposition drops per destination, computed with the same policies and keys."""
    from streams.pseudonymize.policy import load_policy
    from streams.pseudonymize.pseudonym import is_opposed
    from streams.pseudonymize.transform import Feed

    feeds = [Feed(load_policy(name), keys) for name in ("hdh", "inca")]
    expected: dict[str, str] = {}
    drops: Counter[str] = Counter()
    for topic, records in found.items():
        if not topic.startswith("canonical."):
            continue
        kind = topic.removeprefix("canonical.")
        for record in records:
            objecting = is_opposed(opposed, record["patient"], keys)
            for feed in feeds:
                national = feed.apply(kind, record)
                if national is None:
                    continue
                if objecting:
                    drops[feed.destination] += 1
                else:
                    expected[str(national.record["envelope"]["event_id"])] = national.topic
    return expected, drops


def report(
    found: dict[str, list[dict[str, Any]]],
    raw_ids: set[str],
    national: dict[str, list[dict[str, Any]]],
    expected: dict[str, str],
    drops: Counter[str],
    out: Out,
) -> int:
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
    for topic in sorted(national):
        out(f"  {topic:<44}{len(national[topic]):>8} records")
    for destination, n in sorted(drops.items()):
        out(f"  {'opposition drops, ' + destination:<44}{n:>8} (counted, not sent)")
    arrived = {str(r["envelope"]["event_id"]) for records in national.values() for r in records}
    national_missing = set(expected) - arrived
    out(f"  {'national records expected but missing':<44}{len(national_missing):>8}")
    out("")
    out("National topics hold pseudonymized Avro records (key = pseudonym), registered FULL_TRANSITIVE at")
    out("http://127.0.0.1:8081/apis/ccompat/v7; what each destination receives: docs/pseudonymization.md.")
    return 0 if not missing and not national_missing else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise(err: KafkaError) -> None:
    raise AffluentError(f"Kafka refused the demo record: {err.str()}")
