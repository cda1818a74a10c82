"""``affluent trace`` on the real broker and registry, with real normalize and pseudonymize workers.

Three synthetic messages go into ``ingest.hl7v2.raw``: an ORU that maps and reaches the national
topics, an ADT without a PID (dead-lettered whole by normalize), and the same ORU's events traced by
one of their event ids. Trace must find every hop by raw id, by FACILITY/MSH-10 and by event id,
recognise the national records by their keyed event ids, explain the destinations that got nothing,
and record the read in the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from affluent.core.topics import INGEST_HL7V2_RAW
from affluent.sim import synthetic
from affluent.trace import Trace, parse_target, trace
from connectors.raw import RawMessage
from connectors.runtime import topic_codec
from schemas.audit_log import read_entries
from schemas.catalog import CANONICAL_TOPICS, DLQ_NORMALIZE, NATIONAL_TOPICS
from streams.normalize.worker import RAW_TOPICS
from streams.pseudonymize.worker import KEY_FILE_ENV
from tests.support.pipeline import KEY_FILE, ends, free_port, pseudonymize_sources, start_group_at, worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACILITY, APPLICATION = "CHU-SYNTH", "SIH-DEMO"


async def store(settings, registry, messages: list[tuple[str, str, bytes]]) -> list[str]:
    """Raw records as the MLLP door writes them; returns their raw ids."""
    producer = DurableProducer(settings.kafka)
    try:
        codec = await topic_codec(registry, INGEST_HL7V2_RAW, "raw_message")
        ids = []
        for control_id, message_type, payload in messages:
            message = RawMessage(
                "hl7v2",
                "mllp",
                FACILITY,
                APPLICATION,
                payload,
                "x-application/hl7-v2+er7",
                message_id=control_id,
                message_type=message_type,
            )
            await producer.send(
                INGEST_HL7V2_RAW, codec.encode(message.record(datetime.now(UTC))), message.key
            )
            ids.append(message.raw_id)
        return ids
    finally:
        producer.flush()


def until_found(settings, text: str, since: datetime, done, who: str, timeout_s: float = 60) -> Trace:
    deadline = time.monotonic() + timeout_s
    while True:
        result = trace(settings, parse_target(text), since, who=who)
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_trace_follows_a_message_to_national_and_a_refused_one_to_its_dead_letter(
    settings, live_kafka, registry, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    run = uuid.uuid4().hex[:8]
    since = datetime.now(UTC) - timedelta(seconds=5)
    rng = random.Random(run)
    patient = synthetic.patient(rng, 0, ipp_base=rng.randrange(10**6, 9 * 10**6))
    when = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    oru_id, bad_id = f"TR{run}A", f"TR{run}B"
    oru = synthetic.oru_r01(rng, patient, oru_id, when, f"V{patient.ipp}")
    no_pid = (
        f"MSH|^~\\&|{APPLICATION}|{FACILITY}|AFFLUENT|HUB|{when:%Y%m%d%H%M%S}||ADT^A01|{bad_id}|P|2.5\r"
        f"EVN|A01|{when:%Y%m%d%H%M%S}\r"
    ).encode()

    norm_group, pseudo_group = f"test-normalize-{run}", f"test-pseudonymize-{run}"
    ensure_topics(live_kafka, [TopicSpec(t) for t in (*RAW_TOPICS, *CANONICAL_TOPICS, *NATIONAL_TOPICS)])
    start_group_at(live_kafka, norm_group, ends(live_kafka, list(RAW_TOPICS)))
    start_group_at(live_kafka, pseudo_group, ends(live_kafka, pseudonymize_sources(live_kafka)))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY__")}
    norm_env = {
        **base_env,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": norm_group,
        "AFFLUENT_STREAMS__METRICS_PORT": str(free_port()),
    }
    pseudo_env = {
        **base_env,
        KEY_FILE_ENV: str(KEY_FILE),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": pseudo_group,
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(free_port()),
    }
    pseudo_cmd = [sys.executable, "-c", "from streams.pseudonymize.cli import main; main()"]
    with (
        worker([sys.executable, "-m", "affluent.cli", "normalize"], norm_env, tmp_path / "normalize.log"),
        worker(pseudo_cmd, pseudo_env, tmp_path / "pseudonymize.log"),
    ):
        oru_raw, bad_raw = asyncio.run(
            store(settings, registry, [(oru_id, "ORU^R01", oru), (bad_id, "ADT^A01", no_pid)])
        )
        who = f"it-tracer-{run}"

        # By raw id: raw record → canonical events → national records (every destination accounted for).
        found = until_found(
            settings,
            oru_raw[:20],
            since,
            lambda t: t.arrived and all(e.national or e.not_sent for r in t.raws for e in r.events),
            who,
        )
        assert [r.raw_id for r in found.raws] == [oru_raw]
        [raw] = found.raws
        assert (raw.facility, raw.message_id, raw.message_type) == (FACILITY, oru_id, "ORU^R01")
        assert raw.events and {e.hop.topic for e in raw.events} <= set(CANONICAL_TOPICS)
        assert any(e.national for e in raw.events) and found.arrived
        for event in raw.events:
            destinations = {n.destination for n in event.national} | set(event.not_sent)
            assert destinations == {"hdh", "inca"}, (event.kind, event.national, event.not_sent)
            # INCa takes cohort members only, and this patient has lab results, no cancer
            assert "inca" not in {n.destination for n in event.national}
            assert event.not_sent["inca"].startswith(("held by the cohort stage", "its policy takes no"))
            for national in event.national:
                assert national.hop.topic.startswith(f"national.{national.destination}.")
                assert national.hop.at is not None and event.hop.at is not None
                assert national.hop.at >= event.hop.at - timedelta(seconds=1)
                assert patient.ipp not in national.key and patient.nir not in national.key
        text = "\n".join(found.lines())
        assert f"raw id {oru_raw[:16]}" in text and "arrived: yes" in text
        assert patient.ipp not in text and patient.nir not in text and patient.family not in text
        document = found.to_json()
        assert json.loads(json.dumps(document))["raw"][0]["raw_id"] == oru_raw
        assert patient.ipp not in json.dumps(document)

        # By FACILITY/MSH-10: the same message.
        by_control = trace(settings, parse_target(f"{FACILITY}/{oru_id}"), since, who=who)
        assert [r.raw_id for r in by_control.raws] == [oru_raw]

        # By one of its event ids: back to its raw record and forward again.
        event_id = raw.events[0].event_id
        by_event = trace(settings, parse_target(event_id), since, who=who)
        assert [r.raw_id for r in by_event.raws] == [oru_raw] and by_event.arrived

        # The ADT without a PID: a normalize dead letter with its reason, and nothing national.
        refused = until_found(settings, bad_raw, since, lambda t: bool(t.raws and t.raws[0].dead), who)
        [bad] = refused.raws
        assert bad.events == [] and not refused.arrived
        # one dead letter, or more if another normalize worker on the shared topic read it too
        assert bad.dead and {(d.hop.topic, d.reason_code) for d in bad.dead} == {
            (DLQ_NORMALIZE, "no_patient")
        }
        assert any("dead letter dlq.normalize" in line and "no_patient" in line for line in refused.lines())

    reads = [e for e in read_entries(settings, since=since) if e["who"] == who]
    assert reads and all(e["action"] == "topic_read" for e in reads)
    assert INGEST_HL7V2_RAW in reads[0]["targets"]


def test_nothing_found_says_so_and_a_window_is_checked(settings) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    result = trace(settings, parse_target("0" * 40), since, who="it-tracer-empty")
    assert result.raws == [] and not result.arrived
    assert "nothing found" in "\n".join(result.lines())
    from affluent.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--until must be later"):
        trace(settings, parse_target("0" * 40), since, since - timedelta(seconds=1))
