"""Issue #18, outbound: where the hub's requests and tokens may go, against real servers.

The FHIR door (real broker and registry) fetches id-only notifications from an in-test notifier that
records every request it gets, with a ``/secret`` area outside the notifier's base: a reference escaping
the base (``..``, ``%2e%2e``) must be refused before any request, and so must too many references or
an oversized resource. The puller runs against the in-test FHIR server (tests/support/fhir_server.py)
whose next links, Bulk status and file URLs are pointed at a second, recording server: the source's
token must never reach it.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from affluent.core.errors import ConfigError, FhirSourceError
from affluent.core.settings import FhirNotifierSettings, FhirPollSettings, FhirRestSettings, Settings
from affluent.core.topics import COMPACTED_CONFIG
from affluent.sim import synthetic
from connectors.fhir_poll.config import SourceConfig
from connectors.fhir_poll.puller import open_puller
from connectors.fhir_rest.auth import token_digest
from connectors.fhir_rest.service import FhirRestService
from tests.support.fhir_door import TOKEN, read_topic
from tests.support.fhir_server import FhirTestServer

pytestmark = [pytest.mark.integration]

FHIR = "application/fhir+json"
NOTIFIER_TOKEN = "notifier-test-token"
PULL_TOKEN = "pull-test-token-not-a-secret"
RNG = random.Random(18)
PATIENT = synthetic.patient(RNG, 2)


class Recorder:
    """A server that answers everything and remembers (method, path, Authorization) of each request."""

    def __init__(self, answer: Callable[[web.Request], web.StreamResponse] | None = None) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.answer = answer
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, request.headers.get("Authorization")))
        if self.answer is not None:
            return self.answer(request)
        return web.json_response({"resourceType": "Bundle", "type": "searchset", "entry": []})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.base

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- 1. id-only notifications at the FHIR door ------------------------------------------------------


def notification(*entries: dict[str, Any]) -> dict[str, Any]:
    status = {
        "resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": "event-notification"}],
    }
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, *entries]}


@pytest.fixture
async def door(settings: Settings, registry: Any, live_kafka: Any) -> AsyncIterator[dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = {}

    def answer(request: web.Request) -> web.StreamResponse:
        name = request.path.rsplit("/", 1)[-1]
        if not request.path.startswith("/fhir/Observation/") or name not in resources:
            return web.Response(status=404)
        return web.json_response(resources[name], content_type=FHIR)

    notifier = Recorder(answer)
    base = await notifier.start() + "/fhir"
    raw_topic = f"it.harden.raw.{uuid.uuid4().hex[:8]}"
    seen_topic = f"it.harden.seen.{uuid.uuid4().hex[:8]}"
    fhir = FhirRestSettings(
        port=0,
        metrics_port=None,
        validation_processes=0,
        token_sha256={token_digest(TOKEN): "CHU-TEST|EDS"},
        notifiers={
            "CHU-TEST|EDS": FhirNotifierSettings(
                base_url=base, bearer_token=NOTIFIER_TOKEN, max_references=3, max_fetch_bytes=4096
            )
        },
    )
    service = FhirRestService(
        settings.model_copy(update={"fhir_rest": fhir}), CollectorRegistry(), raw_topic, seen_topic
    )
    port = await service.start(with_telemetry=False)
    session = aiohttp.ClientSession()

    async def notify(*entries: dict[str, Any]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": FHIR}
        body = json.dumps(notification(*entries)).encode()
        url = f"http://127.0.0.1:{port}/fhir/subscription-notification"
        async with session.post(url, data=body, headers=headers) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    try:
        yield {"notify": notify, "notifier": notifier, "base": base, "resources": resources, "raw": raw_topic}
    finally:
        await session.close()
        await service.stop()
        await notifier.stop()


def observation(obs_id: str) -> dict[str, Any]:
    return synthetic.fhir_observation(RNG, PATIENT, obs_id, datetime(2026, 11, 24, 9, 30, tzinfo=UTC))


@pytest.mark.parametrize(
    "escape",
    [
        "/../secret/Observation/obs-1",
        "/%2e%2e/secret/Observation/obs-1",
        "/%2E%2e/%2e%2E/secret/Observation/obs-1",
        "/Observation/%2e%2e/%2e%2e/secret/Observation/obs-1",
        "/Observation%2f..%2f..%2fsecret",
    ],
)
async def test_an_id_only_reference_escaping_the_base_is_refused_before_any_request(door, escape) -> None:
    status, outcome = await door["notify"]({"fullUrl": door["base"] + escape})
    assert 400 <= status < 500, outcome
    assert outcome["resourceType"] == "OperationOutcome"
    assert door["notifier"].seen == []


async def test_id_only_caps_references_and_fetched_bytes_and_still_fetches_what_is_fine(
    door, live_kafka, registry
) -> None:
    base, resources, notifier = door["base"], door["resources"], door["notifier"]
    status, outcome = await door["notify"](*({"fullUrl": f"{base}/Observation/n{n}"} for n in range(4)))
    assert (status, outcome["issue"][0]["code"]) == (413, "too-costly")
    assert notifier.seen == []

    big = observation("obs-big") | {"note": [{"text": "x" * 8000}]}
    resources["obs-big"] = big
    status, outcome = await door["notify"]({"fullUrl": f"{base}/Observation/obs-big"})
    assert (status, outcome["issue"][0]["code"]) == (422, "too-costly")
    assert "x" * 20 not in json.dumps(outcome)

    fine_id = f"obs-{uuid.uuid4().hex[:10]}"
    resources[fine_id] = observation(fine_id)
    status, _ = await door["notify"]({"fullUrl": f"{base}/%2e/x/../Observation/{fine_id}"})
    assert status == 200
    assert notifier.seen[-1] == ("GET", f"/fhir/Observation/{fine_id}", f"Bearer {NOTIFIER_TOKEN}")
    assert all(path.startswith("/fhir/Observation/") for _, path, _ in notifier.seen)
    stored = [r for r in read_topic(live_kafka, registry, door["raw"]) if fine_id.encode() in r["payload"]]
    assert len(stored) == 1 and stored[0]["attributes"]["subscription_payload"] == "id-only"


# --- 2. the puller: pinned origin, plain http ---------------------------------------------------------


@pytest.fixture
def pull_settings(settings: Settings, new_topic: Callable[..., str]) -> Settings:
    fp = FhirPollSettings(
        raw_topic=new_topic("test.harden.raw"),
        dlq_topic=new_topic("test.harden.dlq"),
        checkpoint_topic=new_topic("test.harden.cp", **COMPACTED_CONFIG),
        max_attempts=2,
        backoff_base_s=0.05,
        bulk_poll_s=0.05,
        bulk_timeout_s=20,
        metrics_port=None,
    )
    return settings.model_copy(update={"fhir_poll": fp})


class FilesElsewhere(FhirTestServer):
    """Bulk output files listed on another host (an object store, say), as the Bulk Data spec allows."""

    file_base: str = ""

    async def _status(self, request: web.Request) -> web.Response:
        response = await super()._status(request)
        if response.status != 200 or not self.file_base:
            return response
        manifest = json.loads(response.text or "{}")
        for output in manifest["output"]:
            output["url"] = output["url"].replace(self.base_url, self.file_base)
        return web.json_response(manifest)


@pytest.fixture
async def fhir_server(monkeypatch) -> AsyncIterator[FilesElsewhere]:
    monkeypatch.setenv("TEST_HARDEN_TOKEN", PULL_TOKEN)
    srv = FilesElsewhere(require_auth=True, static_tokens={PULL_TOKEN}, polls_before_ready=0)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.start()
    yield rec
    await rec.stop()


def source_of(base: str, **changes: Any) -> SourceConfig:
    fields: dict[str, Any] = {
        "name": f"eds-{uuid.uuid4().hex[:6]}",
        "base_url": base,
        "facility": "CHU-TEST",
        "resource_types": ["Patient"],
        "page_size": 10,
        "auth": {"kind": "static", "token_env": "TEST_HARDEN_TOKEN"},
    }
    fields.update(changes)
    return SourceConfig(**fields)


async def test_a_next_link_to_another_origin_is_not_followed_and_gets_no_token(
    fhir_server, elsewhere, pull_settings, live_kafka
) -> None:
    fhir_server.seed("Patient", 25)
    source = source_of(fhir_server.base_url + "/fhir")
    fhir_server.base_url = elsewhere.base  # the server now names another host in its next links
    async with open_puller(pull_settings, source) as puller:
        with pytest.raises(FhirSourceError, match="next link points outside"):
            await puller.run_once()
    assert elsewhere.seen == []


async def test_a_bulk_status_url_on_another_origin_is_not_polled(
    fhir_server, elsewhere, pull_settings, live_kafka
) -> None:
    fhir_server.seed("Patient", 5)
    source = source_of(fhir_server.base_url + "/fhir", mode="bulk")
    fhir_server.base_url = elsewhere.base  # Content-Location now names another host
    async with open_puller(pull_settings, source) as puller:
        with pytest.raises(FhirSourceError, match="bulk status URL points outside"):
            await puller.run_once()
    assert elsewhere.seen == []  # neither polled nor DELETEd with the token


@pytest.mark.parametrize("requires_token", [False, True])
async def test_bulk_files_on_another_host_never_get_the_token(
    fhir_server, pull_settings, live_kafka, registry, requires_token
) -> None:
    served: list[str | None] = []

    def file(request: web.Request) -> web.StreamResponse:
        served.append(request.headers.get("Authorization"))
        job, name = request.path.split("/")[-2:]
        return web.Response(
            body=fhir_server._jobs[job].files[name][1], content_type="application/fhir+ndjson"
        )

    files = Recorder(file)
    fhir_server.file_base = await files.start()
    fhir_server.requires_access_token = requires_token
    fhir_server.seed("Patient", 12)
    source = source_of(fhir_server.base_url + "/fhir", mode="bulk")
    try:
        async with open_puller(pull_settings, source) as puller:
            if requires_token:  # the spec's "same authorization as $export": not on a foreign host
                with pytest.raises(FhirSourceError, match="requiresAccessToken"):
                    await puller.run_once()
            else:
                [report] = await puller.run_once()
                assert report.stored == 12
    finally:
        await files.stop()
    assert served == ([] if requires_token else [None])


async def test_a_plain_http_source_beyond_loopback_is_refused_before_any_request(pull_settings) -> None:
    source = source_of("http://eds.chu.invalid/fhir", auth={"kind": "none"})
    with pytest.raises(ConfigError, match="plain http beyond loopback"):
        async with open_puller(pull_settings, source):
            pass
    allowed = pull_settings.fhir_poll.model_copy(update={"allow_plaintext": True})
    async with open_puller(pull_settings.model_copy(update={"fhir_poll": allowed}), source) as puller:
        assert puller.http.allow_plaintext
