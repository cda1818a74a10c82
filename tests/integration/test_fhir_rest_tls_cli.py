"""The FHIR door over mutual TLS (the certificate names the sender), and as the `affluent fhir` process."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import sys
import uuid
from asyncio.subprocess import PIPE
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.settings import FhirRestSettings
from affluent.sim import synthetic
from connectors.fhir_rest.auth import token_digest
from connectors.fhir_rest.service import FhirRestService
from tests.support.certs import TestPki
from tests.support.fhir_door import TOKEN, read_topic

pytestmark = [pytest.mark.integration]

FHIR = "application/fhir+json"


def observation() -> dict:
    rng = random.Random(9)
    return synthetic.fhir_observation(
        rng, synthetic.patient(rng, 2), f"obs-{uuid.uuid4().hex[:12]}", datetime.now(UTC)
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_client_certificate_names_the_sender(settings, registry, live_kafka, tmp_path):
    pki = TestPki(tmp_path / "pki")
    server_cert = pki.issue("127.0.0.1", server=True)
    lab = pki.issue("lab-gw.chu.test")
    raw_topic = f"it.fhirtls.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(live_kafka, [TopicSpec(raw_topic, partitions=1)])
    fhir = FhirRestSettings(
        port=0,
        metrics_port=None,
        tls_certificate=server_cert.cert,
        tls_key=server_cert.key,
        tls_client_ca=pki.ca.cert,
        tls_subjects={"lab-gw.chu.test": "CHU-TEST|LAB"},
        token_sha256={token_digest(TOKEN): "CHU-TEST|EDS"},
    )
    service = FhirRestService(
        settings.model_copy(update={"fhir_rest": fhir}),
        CollectorRegistry(),
        raw_topic,
        f"it.fhirtls.seen.{uuid.uuid4().hex[:8]}",
    )
    port = await service.start(with_telemetry=False)
    url = f"https://127.0.0.1:{port}/fhir/Observation"
    with_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
    with_cert.load_cert_chain(lab.cert, lab.key)
    without_cert = ssl.create_default_context(cafile=str(pki.ca.cert))
    obs = observation()
    body = json.dumps(obs).encode()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url, data=body, headers={"Content-Type": FHIR}, ssl=with_cert
            ) as response:
                assert response.status == 201
            async with session.post(
                url, data=body, headers={"Content-Type": FHIR}, ssl=without_cert
            ) as response:
                assert response.status == 401
            token = {"Content-Type": FHIR, "Authorization": f"Bearer {TOKEN}"}
            async with session.post(url, data=body, headers=token, ssl=with_cert) as response:
                assert response.status == 403  # the certificate says LAB, the token says EDS
    finally:
        await service.stop()
    [raw] = read_topic(live_kafka, registry, raw_topic)
    assert (raw["source_facility"], raw["source_application"]) == ("CHU-TEST", "LAB")
    assert raw["attributes"]["credential"] == "mtls" and raw["attributes"]["tls_subject"] == "lab-gw.chu.test"


async def test_affluent_fhir_serves_until_sigterm():
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "AFFLUENT_FHIR_REST__PORT": str(port),
        "AFFLUENT_FHIR_REST__METRICS_PORT": str(metrics),
        "AFFLUENT_FHIR_REST__TOKEN_SHA256": json.dumps({token_digest(TOKEN): "CHU-TEST|EDS"}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "affluent.cli", "fhir", env=env, stdout=PIPE, stderr=PIPE
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert f"127.0.0.1:{port}/fhir" in banner, (await proc.stderr.read()).decode()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{metrics}/health") as response:
                assert response.status == 200
            headers = {"Content-Type": FHIR, "Authorization": f"Bearer {TOKEN}"}
            url = f"http://127.0.0.1:{port}/fhir/Observation"
            async with session.post(
                url, data=json.dumps(observation()).encode(), headers=headers
            ) as response:
                assert response.status == 201
            async with session.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                text = await response.text()
                assert (
                    'affluent_fhir_rest_records_total{outcome="stored",resource_type="Observation"} 1.0'
                    in text
                )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
