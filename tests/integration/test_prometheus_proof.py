"""Proof that the shipped dashboards and alerts work: a real Prometheus scrapes the running pipeline.

The MLLP door (in this process, its own telemetry port) and the normalize and pseudonymize workers
(subprocesses, fresh consumer groups started at the current end of their inputs) run while two
synthetic senders send traffic, a few of it bad (an unsupported message type → AR + dead letter, noise
between frames → a frame error) and one patient objects (→ opposition drops). Prometheus (the Debian
package's binary, started here with a temporary storage and port) loads the shipped prometheus.yml with
only its intervals shortened, a targets file with this test's ports, and the shipped rules rendered
with thresholds a short test can reach. Then, through Prometheus' HTTP API:

- every query of every generated dashboard panel returns data (template variables substituted);
- every rule evaluates without error, and ``promtool check rules/config`` accept the shipped files;
- provoked conditions fire their alerts: bad messages → dead letters and AR acknowledgements, a sender
  that stops → no traffic from it (and not from the one that goes on), a worker stopped → process down;
- nothing identifying of the synthetic patients appears in any /metrics page.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from affluent.core.auth import StaticTokens, new_token
from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.settings import DeviceSettings, DeviceToken, FhirRestSettings, MllpSettings
from affluent.core.topics import (
    COMPACTED_CONFIG,
    CONTROL_OPPOSITION,
    INGEST_DEVICE_RAW,
    INGEST_FHIR_RAW,
    INGEST_HL7V2_RAW,
)
from affluent.sim import synthetic
from connectors.devices.intake import token_hash
from connectors.devices.service import DeviceService
from connectors.fhir_rest.auth import token_digest
from connectors.fhir_rest.service import FhirRestService
from connectors.mllp.client import send_all
from connectors.mllp.framing import encode_frame
from connectors.mllp.service import MllpService
from schemas.catalog import CANONICAL_TOPICS
from schemas.readiness import dependencies
from streams.opposition.cli import build_service
from streams.opposition.http import OppositionEndpoint
from streams.pseudonymize.cli import opposition_remove
from streams.pseudonymize.worker import KEY_FILE_ENV, load_keys
from tests.integration.test_pseudonymize_e2e import canaries, leaks, run_messages
from tests.support.devices import sample as device_sample
from tests.support.observability import (
    ROOT,
    metric_names,
    metric_table,
    panel_queries,
    rules_module,
    substitute,
)
from tests.support.pipeline import (
    KEY_FILE,
    ends,
    fetch,
    free_port,
    pseudonymize_sources,
    start_group_at,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RAW_TOPICS = (INGEST_HL7V2_RAW, INGEST_FHIR_RAW, INGEST_DEVICE_RAW)
SILENCE_S = 6


def prometheus_binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        pytest.fail("Prometheus is not installed: apt-get install prometheus (.ci/run does it)")
    return prometheus, promtool


def render_prometheus(tmp: Path, ports: dict[str, int]) -> Path:
    """The shipped config with 1 s intervals, this test's targets and short-threshold rules."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    (tmp / "targets").mkdir()
    (tmp / "rules").mkdir()
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"component": c}} for c, port in ports.items()]
    (tmp / "targets" / "test.yml").write_text(yaml.safe_dump(targets))
    rules = rules_module()
    short = rules.Thresholds(
        sender_silence_s=SILENCE_S,
        sender_lookback="10m",
        dead_letter_window="5m",
        dead_letters=0,
        e2e_window="5m",
        e2e_p99_s=0,
        lag_window="1m",
        negative_ack_window="5m",
        negative_acks=0,
        down_for="0s",
        for_="0s",
    )
    (tmp / "rules" / "affluent.rules.yml").write_text(rules.render(short))
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}: {last!r}")


def as_sender(payload: bytes, facility: str) -> bytes:
    return payload.replace(b"|SIH-DEMO|CHU-SYNTH|", f"|SIH-DEMO|{facility}|".encode(), 1)


def unsupported(control_id: str, facility: str) -> bytes:
    stamp = time.strftime("%Y%m%d%H%M%S")
    return (
        f"MSH|^~\\&|SIH-DEMO|{facility}|AFFLUENT|HUB|{stamp}||SIU^S12|{control_id}|P|2.5\rSCH|{control_id}\r"
    ).encode()


async def with_noise(port: int, payload: bytes) -> bytes:
    """Bytes outside any frame, then a frame: the door counts a frame error and still answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"noise-between-frames" + encode_frame(payload))
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
    finally:
        writer.close()


def firing(base: str) -> list[dict[str, str]]:
    return [a["labels"] for a in api(base, "alerts")["alerts"] if a["state"] == "firing"]


FHIR_TOKEN, DEVICE_TOKEN = "proof-fhir-token", "proof-device-token"


async def start_fhir_door(settings: Any, metrics_port: int) -> tuple[int, FhirRestService]:
    fhir = FhirRestSettings(
        port=0, metrics_port=metrics_port, token_sha256={token_digest(FHIR_TOKEN): "PROOF-EDS|EDS"}
    )
    service = FhirRestService(settings.model_copy(update={"fhir_rest": fhir}), CollectorRegistry())
    return await service.start(), service


async def start_devices_door(settings: Any, metrics_port: int) -> tuple[int, DeviceService]:
    devices = DeviceSettings(
        port=0,
        metrics_port=metrics_port,
        tokens=[DeviceToken(sha256=token_hash(DEVICE_TOKEN), sender="PROOF-GW", mappings=["bp-single"])],
    )
    service = DeviceService(settings.model_copy(update={"devices": devices}), CollectorRegistry())
    return await service.start(), service


async def send_fhir_and_devices(fhir_port: int, devices_port: int, patient: Any, run: str) -> None:
    """Traffic for the FHIR and device boards: stored resources and readings, and one refusal each."""
    when = datetime.now(UTC)
    async with httpx.AsyncClient(timeout=30) as client:
        fhir = f"http://127.0.0.1:{fhir_port}/fhir/Observation"
        auth = {"Authorization": f"Bearer {FHIR_TOKEN}", "Content-Type": "application/fhir+json"}
        for i in range(2):  # two rounds: the first sample of a counter is its baseline for rate()
            for n in range(3):
                resource = synthetic.fhir_observation(random.Random(n), patient, f"proof-{run}-{i}-{n}", when)
                answer = await client.post(fhir, content=json.dumps(resource), headers=auth)
                assert answer.status_code == 201, answer.text
            assert (await client.post(fhir, content=b"{}", headers=auth)).status_code == 400
            reading = f"http://127.0.0.1:{devices_port}/devices/bp-single"
            device_auth = {"Authorization": f"Bearer {DEVICE_TOKEN}", "Content-Type": "application/json"}
            answer = await client.post(reading, content=device_sample("bp-single"), headers=device_auth)
            assert answer.status_code == 202, answer.text
            assert (await client.post(reading, content=b"[", headers=device_auth)).status_code == 400
            await asyncio.sleep(2.5)


async def test_dashboards_and_alerts_against_a_real_prometheus(
    settings, live_kafka, registry, tmp_path, monkeypatch, request
):
    prometheus_bin, promtool = prometheus_binaries()
    for args in (
        ["check", "rules", str(PROMETHEUS_DIR / "rules" / "affluent.rules.yml")],
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=30)  # noqa: ASYNC221
        assert done.returncode == 0, done.stdout + done.stderr

    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    keys = load_keys()
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    patients = [replace(synthetic.patient(rng, i), ipp=f"{rng.randrange(10**7, 10**8)}") for i in range(3)]
    objecting = patients[0]
    ensure_topics(live_kafka, [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG)])
    objection = dict(ins=objecting.nir, ipp=objecting.ipp, authority=synthetic.HOSPITAL_OID)
    request.addfinalizer(lambda: opposition_remove(settings, keys=keys, **objection))
    # The opposition endpoint, in this process: the objection goes through it (→ retractions, requests).
    ports = {
        "mllp": free_port(),
        "normalize": free_port(),
        "pseudonymize": free_port(),
        "opposition": free_port(),
        "fhir": free_port(),
        "devices": free_port(),
    }
    opposition_registry = CollectorRegistry()
    opposition = build_service(settings, keys, opposition_registry)
    await opposition.start()
    token, digest = new_token()
    endpoint = OppositionEndpoint(
        opposition,
        StaticTokens({"proof": digest}),
        opposition_registry,
        dependencies(live_kafka, settings.registry),
    )
    await endpoint.start("127.0.0.1", ports["opposition"])
    request.addfinalizer(lambda: asyncio.run(opposition.stop()))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['opposition']}", timeout=30) as client:
        answer = await client.post(
            "/opposition", json=objection, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 201, answer.text

    norm_group, pseudo_group = f"test-proof-normalize-{run}", f"test-proof-pseudonymize-{run}"
    ensure_topics(live_kafka, [TopicSpec(t) for t in (*RAW_TOPICS, *CANONICAL_TOPICS)])
    start_group_at(live_kafka, norm_group, ends(live_kafka, list(RAW_TOPICS)))
    start_group_at(live_kafka, pseudo_group, ends(live_kafka, pseudonymize_sources(live_kafka)))

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_PSEUDO_KEY__")}
    norm_env = {
        **base_env,
        "AFFLUENT_STREAMS__NORMALIZE_GROUP": norm_group,
        "AFFLUENT_STREAMS__METRICS_PORT": str(ports["normalize"]),
    }
    pseudo_env = {
        **base_env,
        KEY_FILE_ENV: str(KEY_FILE),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": pseudo_group,
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(ports["pseudonymize"]),
    }
    config = render_prometheus(tmp_path, ports)
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}"
    door = MllpService(
        settings.model_copy(update={"mllp": MllpSettings(port=0, metrics_port=ports["mllp"])}),
        CollectorRegistry(),
    )
    steady, stopping = f"PROOF-A-{run}", f"PROOF-B-{run}"
    texts = canaries(patients)
    pages: dict[str, str] = {}

    with (
        worker(
            [sys.executable, "-m", "affluent.cli", "normalize"], norm_env, tmp_path / "normalize.log"
        ) as norm,
        worker([sys.executable, "-m", "affluent.cli", "pseudonymize"], pseudo_env, tmp_path / "pseudo.log"),
        worker(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            dict(os.environ),
            tmp_path / "prometheus.log",
        ),
    ):
        mllp_port = await door.start()
        fhir_port, fhir_door = await start_fhir_door(settings, ports["fhir"])
        devices_port, devices_door = await start_devices_door(settings, ports["devices"])
        await send_fhir_and_devices(fhir_port, devices_port, patients[1], run)
        keep_sending = asyncio.Event()

        async def steady_sender() -> None:
            i = 0
            while not keep_sending.is_set():
                payload = as_sender(run_messages(patients[1:2], f"{run}S{i}")[0], steady)
                await send_all("127.0.0.1", mllp_port, [payload], senders=1)
                i += 1
                await asyncio.sleep(1)

        background = asyncio.create_task(steady_sender())
        try:
            good = [as_sender(p, stopping) for p in run_messages(patients, run)]
            codes = await send_all("127.0.0.1", mllp_port, good, senders=2)
            assert set(codes) <= {"AA", "CA"}, codes
            assert await with_noise(mllp_port, as_sender(run_messages(patients[2:], f"{run}N")[0], stopping))
            # Bad messages in two rounds: a counter's first sample is its baseline for increase().
            for round_no in range(2):
                bad = [unsupported(f"BAD{run}{round_no}{i}", stopping) for i in range(3)]
                assert set(await send_all("127.0.0.1", mllp_port, bad, senders=1)) == {"AR"}
                if round_no == 0:  # Prometheus must hold the first value before the second round
                    baseline = ('affluent_mllp_acks_total{code="AR"}', "affluent_dlq_records_total")

                    def scraped(queries: tuple[str, ...] = baseline) -> bool:
                        return all(api(base, "query", query=q)["result"] for q in queries)

                    await asyncio.to_thread(wait_until, scraped, 30, "the first dead letters scraped")

            # Every panel's query returns data (panels on announced, not yet exported metrics excepted).
            _, pending = metric_table()
            queries = [(f, t, substitute(q)) for f, t, q in panel_queries() if not metric_names(q) & pending]
            assert len(queries) >= 25

            def empty_panels() -> list[str]:
                return [f"{f}: {t}: {q}" for f, t, q in queries if not api(base, "query", query=q)["result"]]

            def all_have_data() -> bool:
                return not empty_panels()

            try:
                await asyncio.to_thread(wait_until, all_have_data, 90, "data in every panel")
            except pytest.fail.Exception:
                pytest.fail(f"panels without data: {empty_panels()}")

            # Every rule evaluates; the provoked conditions fire.
            groups = (await asyncio.to_thread(api, base, "rules"))["groups"]
            health = {r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]}
            assert len(health) == 6 and all(h == "ok" for h, _ in health.values()), health

            def fired() -> set[str]:
                now = firing(base)
                got = {a["alertname"] for a in now if a["alertname"] != "AffluentSenderSilent"}
                got |= {f"silent:{a['sender']}" for a in now if a["alertname"] == "AffluentSenderSilent"}
                return got

            want = {
                "AffluentDeadLettersHigh",
                "AffluentNegativeAcks",
                "AffluentEndToEndSlow",
                f"silent:{stopping}",
            }
            seen: list[set[str]] = [set()]

            def wanted_fire() -> set[str] | None:
                seen[0] = fired()
                return seen[0] if want <= seen[0] else None

            try:
                alerts = await asyncio.to_thread(wait_until, wanted_fire, 60, "alerts")
            except pytest.fail.Exception:
                series = {
                    q: api(base, "query", query=q)["result"]
                    for q in ("affluent_mllp_acks_total", "affluent_dlq_records_total")
                }
                pytest.fail(f"alerts firing: {seen[0]}, wanted {want}; series {series}")
            assert f"silent:{steady}" not in alerts, "a sender that keeps sending is reported silent"
            assert "AffluentProcessDown" not in alerts
            dlq = [a for a in firing(base) if a["alertname"] == "AffluentDeadLettersHigh"]
            # The MLLP refusals; the device reading of an unregistered device may be dead-lettered by
            # normalize too (its device is not linked in this test), nothing else.
            reasons = {(a["stage"], a["reason"]) for a in dlq}
            assert ("ingest", "unsupported_type") in reasons
            assert reasons <= {("ingest", "unsupported_type"), ("normalize", "unknown_device")}, reasons

            for component, port in ports.items():
                pages[component] = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
                ready = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/ready")
                assert json.loads(ready) == {"ready": True, "checks": {"kafka": True, "registry": True}}
        finally:
            keep_sending.set()
            await background
            await door.stop()
            await fhir_door.stop()
            await devices_door.stop()
            await endpoint.stop()

        # A worker stopped: Prometheus fails to scrape it and the process-down alert names it.
        norm.terminate()
        norm.wait(30)

        def normalize_down() -> bool:
            return any(
                a["alertname"] == "AffluentProcessDown" and a["component"] == "normalize"
                for a in firing(base)
            )

        await asyncio.to_thread(wait_until, normalize_down, 30, "AffluentProcessDown for normalize")

    for component, page in pages.items():
        assert not leaks(page.encode(), texts), f"identifying text in {component}'s /metrics"
    assert 'affluent_dlq_records_total{reason="unsupported_type",stage="ingest"}' in pages["mllp"]
