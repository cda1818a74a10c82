"""The right to object, end to end: the HTTP endpoint, the registry, a real pseudonymize worker.

Canonical observations of two synthetic patients are produced straight to ``canonical.observation``
(the normalize stage has its own tests); a pseudonymize worker subprocess turns them into national
records. Patient P objects through the authenticated endpoint *while* their events flow:

- before the objection, P's events reach the national topics;
- the registration answers 201 only once the registry entries and the national retractions are in
  Kafka; the retractions name every pseudonym P was published under (INS and IPP forms, every kept key);
- after the objection is in force, none of P's events reaches a national topic (the drops are counted),
  while the other patient's keep flowing;
- withdrawing the objection restores the flow for P's *new* events.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from affluent.core.auth import new_token
from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.producer import DurableProducer
from affluent.core.settings import OppositionSettings
from affluent.core.topics import value_subject
from formats.clinical.identity import ins_key
from schemas.catalog import CANONICAL_TOPICS, NATIONAL_TOPICS
from schemas.registry import AvroCodec, decode, load_schema
from streams.normalize.envelope import event_id_of
from streams.opposition.cli import build_service
from streams.opposition.http import OppositionEndpoint
from streams.pseudonymize.pseudonym import CONTEXT_PATIENT, pseudonym
from streams.pseudonymize.worker import KEY_FILE_ENV, build_feeds, load_keys
from tests.support import canonical_samples as cs
from tests.support.pipeline import (
    KEY_FILE,
    ends,
    fetch,
    free_port,
    pseudonymize_sources,
    records_on,
    seen_event_ids,
    start_group_at,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTHORITY = cs.IPP_AUTHORITY_OID
OBSERVATION = "canonical.observation"


def synthetic_patient(rng: random.Random) -> dict[str, Any]:
    nir13 = f"2{rng.randrange(10**11, 10**12)}"
    return cs.patient_ref(ipp=f"T{rng.randrange(10**8, 10**9)}", nir=f"{nir13}{ins_key(nir13):02d}")


def observation(ref: dict[str, Any], run: str, n: int) -> dict[str, Any]:
    record = cs.sample("observation", patient=ref)
    message_id = f"{run}-{ref['ipp']['id']}-{n}"
    record["envelope"]["event_id"] = event_id_of("hl7v2", "CHU-TEST", "LAB", message_id, "obs@OBX[1]")
    record["envelope"]["ingest_time"] = datetime.now(UTC)
    record["encounter"] = None
    return record


async def test_objection_during_traffic_retracts_stops_and_withdrawal_restores(
    settings, live_kafka, registry, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    keys = load_keys()
    feeds = build_feeds(keys)
    hdh = next(f for f in feeds if f.destination == "hdh")
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    objecting, other = synthetic_patient(rng), synthetic_patient(rng)
    objection = {"ins": objecting["ins"]["matricule"], "ipp": objecting["ipp"]["id"], "authority": AUTHORITY}

    group = f"test-opposition-{run}"
    ensure_topics(live_kafka, [TopicSpec(t) for t in (*CANONICAL_TOPICS, *NATIONAL_TOPICS)])
    start_group_at(live_kafka, group, ends(live_kafka, pseudonymize_sources(live_kafka)))
    national_start = ends(live_kafka, list(NATIONAL_TOPICS))
    codec = AvroCodec(registry, value_subject(OBSERVATION), load_schema("canonical/observation"), "BACKWARD")
    producer = DurableProducer(live_kafka)

    sent: dict[str, list[str]] = {"before": [], "during": [], "after": [], "withdrawn": [], "other": []}

    sent_at: dict[str, float] = {}  # national event id → when its canonical record was in Kafka

    async def send(ref: dict[str, Any], phase: str, n: int) -> None:
        record = observation(ref, run, n)
        await producer.send(OBSERVATION, codec.encode(record), ref["key"].encode())
        national = hdh.apply("observation", record)
        assert national is not None
        event_id = national.record["envelope"]["event_id"]
        sent["other" if ref is other else phase].append(event_id)
        sent_at[event_id] = time.monotonic()

    token, digest = new_token()
    metrics_registry = CollectorRegistry()
    service = build_service(settings, keys, metrics_registry)
    await service.start()
    endpoint = OppositionEndpoint(service, _tokens({"dpo-test": digest}), metrics_registry)
    port = await endpoint.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}

    metrics_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY__")},
        KEY_FILE_ENV: str(KEY_FILE),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": group,
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(metrics_port),
    }
    log = tmp_path / "pseudonymize.log"
    withdrawn = False
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # Refusals first: no token, a wrong token, a body that names nobody, not JSON.
            assert (await client.post("/opposition", json=objection)).status_code == 401
            bad = {"Authorization": "Bearer not-the-token"}
            assert (await client.post("/opposition", json=objection, headers=bad)).status_code == 401
            refused = await client.post("/opposition", json={"ipp": objection["ipp"]}, headers=auth)
            assert refused.status_code == 400 and objection["ipp"] not in refused.text
            assert "authority" in refused.json()["detail"]
            not_json = await client.post("/opposition", content=b"ins=1", headers=auth)
            assert not_json.status_code == 415

            with worker([sys.executable, "-m", "affluent.cli", "pseudonymize"], env, log) as proc:
                for n in range(5):
                    await send(objecting, "before", n)
                    await send(other, "before", n)
                seen = await asyncio.to_thread(
                    seen_event_ids, live_kafka, national_start, set(sent["before"] + sent["other"]), 60
                )
                assert set(sent["before"]) <= seen, "P's events before the objection reach the platform"

                # During traffic: P's events keep coming while the objection is registered.
                async def traffic() -> None:
                    for n in range(100, 200):
                        await send(objecting, "during", n)
                        await asyncio.sleep(0.02)

                flowing = asyncio.create_task(traffic())
                await asyncio.sleep(0.3)
                answer = await client.post("/opposition", json=objection, headers=auth)
                confirmed_at = time.monotonic()
                await flowing
                assert answer.status_code == 201, answer.text
                hdh_keys, inca_keys = len(keys.all("hdh")), len(keys.all("inca"))
                assert answer.json() == {
                    "status": "registered",
                    "entries": 2,
                    "retractions": 2 * (hdh_keys + inca_keys),
                }
                assert (await client.get("/opposition", headers=auth)).json()["entries"] >= 2

                # After: one registry poll later, nothing of P gets through.
                await asyncio.sleep(1.0)
                for n in range(200, 210):
                    await send(objecting, "after", n)
                for n in range(205, 215):
                    await send(other, "after", n)
                # Every one of P's events since the traffic began is either on a national topic or
                # counted as dropped: only then has the worker read them all.
                pending = set(sent["during"] + sent["after"])
                seen = await _settled(live_kafka, national_start, pending, set(sent["other"]), metrics_port)
                assert set(sent["other"]) <= seen, "the other patient's events keep flowing"
                assert not set(sent["after"]) & seen, "an event after the objection reached the platform"
                # Events sent during the traffic more than one registry poll (+ margin) after the 201.
                late = {e for e in sent["during"] if sent_at[e] > confirmed_at + 1.0}
                assert late, "the traffic did not outlast the registration: the check below would be empty"
                assert not late & seen, "an event a second after the objection reached the platform"

                # Withdrawal: P's new events flow again.
                withdraw = await client.post("/opposition/withdraw", json=objection, headers=auth)
                assert withdraw.status_code == 200 and withdraw.json()["entries"] >= 2
                withdrawn = True
                await asyncio.sleep(1.0)
                for n in range(300, 305):
                    await send(objecting, "withdrawn", n)
                seen = await asyncio.to_thread(
                    seen_event_ids, live_kafka, national_start, set(sent["withdrawn"]), 60
                )
                assert set(sent["withdrawn"]) <= seen, "withdrawing the objection restores the flow"
                assert proc.poll() is None
            metrics_text = await asyncio.to_thread(fetch, f"{base}/metrics")
    finally:
        if not withdrawn:
            await service.withdraw(_objection(objection), "test-cleanup")
        await endpoint.stop()
        await service.stop()
        producer.close()

    # The retractions: on both destinations' retraction topics, keyed by every pseudonym P had.
    retraction_topics = {"national.hdh.retraction.v1", "national.inca.retraction.v1"}
    retractions = records_on(live_kafka, national_start, retraction_topics, lambda v: decode(registry, v))
    expected_keys = set()
    for feed in feeds:
        for key in keys.all(feed.policy.key_name):
            expected_keys.add(pseudonym(key, CONTEXT_PATIENT, f"INS|{objection['ins']}"))
            expected_keys.add(pseudonym(key, CONTEXT_PATIENT, f"IPP|{AUTHORITY}|{objection['ipp']}"))
    ours = [(k, r) for k, r in retractions if k in expected_keys]
    assert {k for k, _ in ours} == expected_keys
    assert all(r["kind"] == "OPPOSITION" and r["reason_code"] == "patient-objection" for _, r in ours)
    assert all(r["patient"]["pseudonym"] == k for k, r in ours)

    # Counted, and nothing identifying in the endpoint's metrics or the worker's output.
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
    }
    assert samples[("affluent_opposition_requests_total", (("action", "register"), ("outcome", "done")))] == 1
    assert (
        samples[("affluent_opposition_requests_total", (("action", "register"), ("outcome", "unauthorized")))]
        == 2
    )
    assert samples[
        ("affluent_national_retractions_total", (("destination", "hdh"), ("kind", "OPPOSITION")))
    ] == 2 * len(keys.all("hdh"))
    output = log.read_text(errors="replace") + metrics_text
    for value in (objection["ins"], objection["ipp"], objection["ins"][:13]):
        assert value not in output
    assert "Traceback" not in log.read_text(errors="replace")


def _tokens(digests: dict[str, str]) -> Any:
    from affluent.core.auth import StaticTokens

    return StaticTokens(OppositionSettings(tokens=digests).tokens)


def _objection(body: dict[str, str]) -> Any:
    from streams.opposition.objection import Objection

    return Objection.from_json(body)


async def _settled(kafka, start, pending: set[str], others: set[str], metrics_port: int) -> set[str]:
    """Wait until the worker accounted for every event of ``pending`` (published or dropped: hdh drops +
    published >= sent) and published ``others``; returns the ids seen on the national topics."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        seen = await asyncio.to_thread(seen_event_ids, kafka, start, pending | others, 2)
        text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{metrics_port}/metrics")
        drops = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "affluent_opposition_drops_total" and s.labels.get("destination") == "hdh"
        )
        # ">=": at-least-once, a record read again after a rebalance is counted again
        if others <= seen and drops + len(pending & seen) >= len(pending):
            return seen
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"worker accounted for {drops} drops + {len(pending & seen)} of {len(pending)}"
            )
        await asyncio.sleep(0.5)
