"""MLLP over TLS with client certificates and a per-facility allow-list (real sockets, real broker)."""

from __future__ import annotations

import ssl
import uuid

import pytest
from prometheus_client import CollectorRegistry

from affluent.core.settings import MllpSettings
from connectors.mllp.service import MllpService
from formats.hl7 import er7
from tests.support.certs import TestPki
from tests.support.mllp_client import MllpClient, control_id_of_ack

pytestmark = pytest.mark.integration

ADT = "MSH|^~\\&|PAS|{fac}|AFF|HUB|20261124||ADT^A01|{cid}|P|2.5\rPID|||7^^^{fac}^PI||ROUX^Maël\r"


@pytest.fixture
async def tls_door(settings, live_kafka, registry, tmp_path):
    pki = TestPki(tmp_path / "pki")
    server = pki.issue("affluent-mllp.test", server=True)
    mllp = MllpSettings(
        port=0,
        metrics_port=None,
        tls_certificate=server.cert,
        tls_key=server.key,
        tls_client_ca=pki.ca.cert,
        tls_require_client_certificate=True,
        tls_allowed_subjects={"CHU-LYON": ["pas.chu-lyon.test"], "CHU-NICE": ["pas.chu-nice.test"]},
    )
    suffix = uuid.uuid4().hex[:8]
    service = MllpService(
        settings.model_copy(update={"mllp": mllp}),
        CollectorRegistry(),
        raw_topic=f"it.tls.raw.{suffix}",
        dlq_topic=f"it.tls.dlq.{suffix}",
    )
    port = await service.start(with_telemetry=False)
    yield pki, port
    await service.stop()


def client_context(pki: TestPki, cn: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cn is not None:
        issued = pki.issue(cn)
        ctx.load_cert_chain(str(issued.cert), str(issued.key))
    return ctx


async def test_allowed_certificate_sends_for_its_facility(tls_door):
    pki, port = tls_door
    client = await MllpClient.connect("127.0.0.1", port, client_context(pki, "pas.chu-lyon.test"))
    cid = uuid.uuid4().hex[:12]
    assert control_id_of_ack((await client.request(ADT.format(fac="CHU-LYON", cid=cid).encode()))[0]) == (
        "AA",
        cid,
    )

    # the same certificate cannot write as another facility
    cid = uuid.uuid4().hex[:12]
    (reply,) = await client.request(ADT.format(fac="CHU-NICE", cid=cid).encode())
    ack = er7.parse(reply)
    assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AE", cid)
    assert "certificate" in (ack.get("ERR-8") or "")
    # nor as a facility absent from the allow-list
    cid = uuid.uuid4().hex[:12]
    assert control_id_of_ack((await client.request(ADT.format(fac="CLINIQUE-X", cid=cid).encode()))[0]) == (
        "AE",
        cid,
    )
    await client.close()


async def test_client_without_certificate_is_refused_at_handshake(tls_door):
    pki, port = tls_door
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = await MllpClient.connect("127.0.0.1", port, client_context(pki, None))
        await client.request(ADT.format(fac="CHU-LYON", cid="X1").encode(), timeout=5)


async def test_plain_tcp_to_a_tls_port_gets_nothing_stored(tls_door):
    _, port = tls_door
    client = await MllpClient.connect("127.0.0.1", port)
    with pytest.raises((ConnectionError, TimeoutError)):
        await client.request(ADT.format(fac="CHU-LYON", cid="X2").encode(), timeout=5)
    await client.close()
