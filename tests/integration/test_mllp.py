"""The MLLP door over real sockets against the real broker and registry."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.settings import MllpSettings, Settings
from connectors.mllp.service import MllpService
from formats.hl7 import er7
from schemas.registry import decode
from tests.support.mllp_client import CORPUS, MllpClient, control_id_of_ack, with_control_id

pytestmark = pytest.mark.integration


def mllp_settings(settings: Settings, **mllp: object) -> Settings:
    return settings.model_copy(
        update={"mllp": MllpSettings(port=0, metrics_port=None, max_frame_bytes=64 * 1024, **mllp)}
    )


@pytest.fixture
async def door(settings, live_kafka, registry):
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        mllp_settings(settings),
        CollectorRegistry(),
        raw_topic=f"it.hl7raw.{suffix}",
        dlq_topic=f"it.dlq.{suffix}",
        ack_topic=f"it.ack.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    service.port = port  # type: ignore[attr-defined]
    yield service
    await service.stop()


async def client_for(door) -> MllpClient:
    return await MllpClient.connect("127.0.0.1", door.port)


def raw_records(reader, registry, topic, expected, timeout_s=20.0):
    return [decode(registry, value) for _, value in reader(topic, expected, timeout_s, partitions=3)]


CORPUS_FILES = sorted(CORPUS.glob("*.hl7"))


async def test_corpus_is_acknowledged_and_stored_once_each(door, reader, registry):
    assert len(CORPUS_FILES) >= 12
    client = await client_for(door)
    sent: dict[str, bytes] = {}
    for path in CORPUS_FILES:
        payload, control_id = with_control_id(path.read_bytes())
        header = er7.parse(payload.decode("latin-1")).segments[0]
        enhanced = bool((header.value(15) or "") + (header.value(16) or ""))
        replies = await client.request(payload)
        code, echoed = control_id_of_ack(replies[0])
        assert echoed == control_id, path.name
        assert code == ("CA" if enhanced else "AA"), (path.name, replies[0])
        sent[control_id] = payload
    await client.close()

    records = raw_records(reader, registry, door.raw_topic, len(sent))
    assert len(records) == len(sent), "exactly one raw record per acknowledged message"
    by_id = {r["message_id"]: r for r in records}
    assert set(by_id) == set(sent)
    for control_id, payload in sent.items():
        rec = by_id[control_id]
        assert rec["payload"] == payload  # untouched bytes
        assert rec["protocol"] == "hl7v2" and rec["connector"] == "mllp"
        assert rec["source_facility"] and rec["message_type"]


async def test_latin1_and_utf8_french_messages(door, reader, registry):
    text = (
        "MSH|^~\\&|PAS|CHU-LYON|AFF|HUB|20261124103000+0100||ADT^A04^ADT_A01|{cid}|P|2.5|||||FRA|{cs}\r"
        "PID|||1234^^^CHU-LYON&1.2.250.1.71.4.2.7&ISO^PI||NOËL^Françoise^^^^^L||19700101|F\r"
        "PV1||O\r"
    )
    client = await client_for(door)
    for charset, codec in (("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8"), ("8859/15", "iso8859-15")):
        cid = uuid.uuid4().hex[:16]
        replies = await client.request(text.format(cid=cid, cs=charset).encode(codec))
        assert control_id_of_ack(replies[0]) == ("AA", cid)
        assert replies[0].encode("latin-1").decode(codec).rstrip("\r").split("\r")[0].endswith(charset)
    await client.close()
    records = raw_records(reader, registry, door.raw_topic, 3)
    assert sorted(r["declared_charset"] for r in records) == ["8859/1", "8859/15", "UNICODE UTF-8"]
    assert not any(r["charset_mismatch"] for r in records)


async def test_duplicate_msh10_replays_the_same_ack_and_stores_once(door, reader, registry):
    payload, cid = with_control_id((CORPUS / "oru_r01_biochimie.hl7").read_bytes())
    first = await client_for(door)
    a1 = await first.request(payload)
    await first.close()
    second = await client_for(door)  # the sender reconnects and resends after losing the ACK
    a2 = await second.request(payload)
    await second.close()
    assert a1 == a2
    records = raw_records(reader, registry, door.raw_topic, 2, timeout_s=5)
    assert [r["message_id"] for r in records] == [cid]


async def test_a_reused_control_id_is_stored_and_a_restamped_resend_is_not(door, reader, registry):
    """Before: the second, different message got the first one's AA replayed and was never stored."""
    from prometheus_client import generate_latest

    payload, cid = with_control_id((CORPUS / "oru_r01_biochimie.hl7").read_bytes())
    msh7 = er7.parse(payload.decode("latin-1")).segments[0].value(7) or ""
    assert msh7, "the corpus message has an MSH-7 to restamp"
    other = payload.replace(b"\rOBX|", b"\rNTE|1||synthetic note\rOBX|", 1)
    restamped = payload.replace(msh7.encode(), b"20300101000000", 1)
    assert other != payload and restamped != payload
    client = await client_for(door)
    answers = [await client.request(p) for p in (payload, other, restamped, other)]
    await client.close()
    assert [control_id_of_ack(r[0]) for r in answers] == [("CA", cid)] * 4  # MSH-15 AL
    assert answers[2] == answers[0] and answers[3] == answers[1]  # resends: replayed from the cache
    assert answers[1] != answers[0]  # the reused id got its own answer
    records = raw_records(reader, registry, door.raw_topic, 3, timeout_s=8)
    assert sorted(r["payload"] for r in records) == sorted([payload, other])
    assert len({r["raw_id"] for r in records}) == 2
    assert {r["message_id"] for r in records} == {cid}
    text = generate_latest(door.metrics_registry).decode()
    assert "affluent_mllp_control_id_reuse_total 1.0" in text
    assert 'affluent_mllp_messages_total{message_type="ORU^R01",outcome="duplicate"} 2.0' in text


async def test_an_hl7_batch_is_stored_message_by_message_with_one_batch_ack(door, reader, registry):
    """Before: the batch frame was refused whole (no_msh) and nothing of it was stored."""
    sources = ["adt_a01_admission_ins.hl7", "oru_r01_biochimie.hl7", "adt_a03_sortie.hl7"]
    messages = [with_control_id((CORPUS / name).read_bytes()) for name in sources]
    payload = (
        b"BHS|^~\\&|SENDER|CHU-SYNTH|AFFLUENT|HUB|20260101120000||||BATCH-1\r"
        + b"".join(m for m, _ in messages)
        + b"BTS|3\r"
    )
    client = await client_for(door)
    [reply] = await client.request(payload)
    await client.close()
    segments = [s for s in reply.split("\r") if s]
    assert segments[0].startswith("BHS|") and segments[0].split("|")[11] == "BATCH-1"
    assert segments[-1] == f"BTS|{sum(s.startswith('MSA') for s in segments)}"
    msa = [s.split("|")[1:3] for s in segments if s.startswith("MSA")]
    assert [cid for _, cid in messages] == [cid for _, cid in msa]  # one ACK each, in order
    assert {code for code, _ in msa} <= {"AA", "CA"}
    records = raw_records(reader, registry, door.raw_topic, 3)
    assert sorted(r["payload"] for r in records) == sorted(m for m, _ in messages)


async def test_duplicate_survives_a_restart(settings, door, reader, registry):
    payload, _ = with_control_id((CORPUS / "adt_a03_sortie.hl7").read_bytes())
    client = await client_for(door)
    a1 = await client.request(payload)
    await client.close()
    await door.stop()
    again = MllpService(
        mllp_settings(settings),
        CollectorRegistry(),
        raw_topic=door.raw_topic,
        dlq_topic=door.dlq_topic,
        ack_topic=door.ack_topic,
    )
    port = await again.start(with_telemetry=False)
    try:
        client = await MllpClient.connect("127.0.0.1", port)
        a2 = await client.request(payload)
        await client.close()
    finally:
        await again.stop()
    assert a1 == a2
    assert len(raw_records(reader, registry, door.raw_topic, 2, timeout_s=5)) == 1


async def test_concurrent_senders_keep_per_connection_order(door, reader, registry):
    template = (
        "MSH|^~\\&|PAS|FAC{n}|AFF|HUB|20261124103000||ADT^A08^ADT_A01|{cid}|P|2.5\r"
        "PID|||{n}^^^FAC{n}^PI||TEST^Zoé\r"
    )

    async def sender(n: int) -> list[str]:
        client = await client_for(door)
        ids = []
        for i in range(25):
            cid = f"S{n}-{i:03d}-{uuid.uuid4().hex[:6]}"
            replies = await client.request(template.format(n=n, cid=cid).encode("latin-1"))
            assert control_id_of_ack(replies[0]) == ("AA", cid)
            ids.append(cid)
        await client.close()
        return ids

    per_sender = await asyncio.gather(*(sender(n) for n in range(8)))
    records = raw_records(reader, registry, door.raw_topic, 200)
    assert len(records) == 200
    for ids in per_sender:
        facility = ids[0].split("-")[0]
        stored = [r["message_id"] for r in records if r["message_id"].startswith(facility + "-")]
        assert stored == ids  # one facility = one key = one partition: order kept


async def test_enhanced_mode_commit_and_application_acks(door):
    cid = uuid.uuid4().hex[:12]
    text = f"MSH|^~\\&|LAB|CHU|AFF|HUB|20261124||ORU^R01|{cid}|P|2.5|||AL|AL\rPID|||1\rOBX|1|NM|2345-7^Glucose^LN||5.2|mmol/L\r"
    client = await client_for(door)
    replies = await client.request(text.encode(), acks=2)
    await client.close()
    assert [control_id_of_ack(r) for r in replies] == [("CA", cid), ("AA", cid)]


async def test_metrics_count_outcomes_without_content(door):
    client = await client_for(door)
    await client.request(with_control_id((CORPUS / "adt_a04_consultation.hl7").read_bytes())[0])
    await client.request(b"MSH|^~\\&|A|F|R|RF|2026||SIU^S12|CANARY42|P|2.5\rPID|||CANARY-NAME\r")
    await client.close()
    from prometheus_client import generate_latest

    text = generate_latest(door.metrics_registry).decode()
    assert 'affluent_mllp_messages_total{message_type="ADT^A04",outcome="stored"} 1.0' in text
    assert 'affluent_mllp_messages_total{message_type="other",outcome="rejected"} 1.0' in text
    assert 'affluent_mllp_rejects_total{reason="unsupported_type"} 1.0' in text
    assert "affluent_mllp_ack_latency_seconds_count 2.0" in text
    assert "CANARY" not in text


async def test_a_silent_connection_is_closed_after_the_idle_timeout(settings, live_kafka, registry):
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        mllp_settings(settings, idle_timeout_s=1.0),
        CollectorRegistry(),
        raw_topic=f"it.idle.raw.{suffix}",
        dlq_topic=f"it.idle.dlq.{suffix}",
        ack_topic=f"it.idle.ack.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    try:
        client = await MllpClient.connect("127.0.0.1", port)
        cid = uuid.uuid4().hex[:12]
        payload = f"MSH|^~\\&|A|F|R|RF|2026||ADT^A01|{cid}|P|2.5\rPID|||1\r".encode()
        assert control_id_of_ack((await client.request(payload))[0]) == (
            "AA",
            cid,
        )  # activity re-arms the timer
        assert await asyncio.wait_for(client.reader.read(10), 5) == b""  # then silence: the door hangs up
        await client.close()
    finally:
        await service.stop()
