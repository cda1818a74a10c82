"""The FHIR REST door against the real broker and registry, with real HTTP clients (aiohttp).

One door for the module (its own raw and idempotency topics). Covers single resources, Bundles with
per-entry answers, Subscription notifications (the id-only fetch goes to a small in-test FHIR server),
every refusal with its status and OperationOutcome, both bearer kinds, idempotency, and the way out of
the door: a POSTed Observation read back from Kafka maps to a canonical observation in the normalize stage.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics
from affluent.core.settings import FhirNotifierSettings, FhirRestSettings
from affluent.sim import synthetic
from connectors.fhir_rest.auth import Authenticator, Unauthenticated, token_digest
from connectors.fhir_rest.service import FhirRestService
from formats.fhir.validate import validate_resource
from streams.normalize.options import MappingOptions
from streams.normalize.stage import NormalizeMetrics, Normalizer
from streams.normalize.worker import default_mappers
from tests.support.fhir_door import AUDIENCE, ISSUER, TOKEN, JwtIssuer, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

FHIR = "application/fhir+json"
SENDER = "CHU-TEST|EDS"
NOTIFIER_TOKEN = "notifier-test-token"
RNG = random.Random(11)
PATIENT = synthetic.patient(RNG, 4)
WHEN = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def new_id(prefix: str = "obs") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def observation(obs_id: str | None = None, version: str | None = "1") -> dict:
    return synthetic.fhir_observation(RNG, PATIENT, obs_id or new_id(), WHEN, version)


class Door:
    def __init__(
        self, base: str, raw_topic: str, session: aiohttp.ClientSession, issuer: JwtIssuer, fetched: list
    ) -> None:
        self.base, self.raw_topic, self.session, self.issuer, self.fetched = (
            base,
            raw_topic,
            session,
            issuer,
            fetched,
        )

    async def send(
        self,
        method: str,
        path: str,
        doc=None,
        token: str | None = TOKEN,
        content_type=FHIR,
        data=None,
        **headers,
    ):
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        headers["Content-Type"] = content_type
        body = data if data is not None else json.dumps(doc, ensure_ascii=False).encode()
        async with self.session.request(method, self.base + path, data=body, headers=headers) as response:
            text = await response.text()
            return response.status, response.headers.copy(), (json.loads(text) if text else None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def door(settings, registry, live_kafka, tmp_path_factory):
    notified = {}  # resources the in-test notifying server holds
    fetched: list[tuple[str, str | None]] = []

    async def read(request: web.Request) -> web.Response:
        fetched.append((request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {NOTIFIER_TOKEN}":
            return web.Response(status=401)
        resource = notified.get(request.match_info["id"])
        if resource is None:
            return web.Response(status=404)
        return web.json_response(resource, content_type=FHIR)

    issuer = JwtIssuer(tmp_path_factory.mktemp("jwks"))
    eds = web.Application()
    eds.router.add_get("/fhir/Observation/{id}", read)

    async def jwks(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(issuer.jwks_file)

    eds.router.add_get("/jwks.json", jwks)
    eds_runner = web.AppRunner(eds)
    await eds_runner.setup()
    eds_site = web.TCPSite(eds_runner, "127.0.0.1", 0)
    await eds_site.start()
    eds_port = eds_site._server.sockets[0].getsockname()[1]

    raw_topic = f"it.fhir.raw.{uuid.uuid4().hex[:8]}"
    seen_topic = f"it.fhir.seen.{uuid.uuid4().hex[:8]}"
    ensure_topics(live_kafka, [TopicSpec(raw_topic, partitions=1)])
    fhir = FhirRestSettings(
        port=0,
        metrics_port=None,
        max_body_bytes=64 * 1024,
        validation_processes=1,  # Bundles are planned in a spawned process: refusals must cross back intact
        token_sha256={token_digest(TOKEN): SENDER},
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_file=issuer.jwks_file,
        jwt_subjects={"eds-client": "CHU-TEST|EDS-JWT"},
        notifiers={
            SENDER: FhirNotifierSettings(
                base_url=f"http://127.0.0.1:{eds_port}/fhir", bearer_token=NOTIFIER_TOKEN
            )
        },
    )
    service = FhirRestService(
        settings.model_copy(update={"fhir_rest": fhir}), CollectorRegistry(), raw_topic, seen_topic
    )
    port = await service.start(with_telemetry=False)
    session = aiohttp.ClientSession()
    d = Door(f"http://127.0.0.1:{port}/fhir", raw_topic, session, issuer, fetched)
    d.notified = notified  # type: ignore[attr-defined]
    d.eds_port = eds_port  # type: ignore[attr-defined]
    d.notifier_base = lambda: f"http://127.0.0.1:{eds_port}/fhir"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        await session.close()
        await service.stop()
        await eds_runner.cleanup()


def records_of(live_kafka, registry, door, message_id_part: str) -> list[dict]:
    return [
        r
        for r in read_topic(live_kafka, registry, door.raw_topic)
        if message_id_part in (r["message_id"] or "") or message_id_part.encode() in r["payload"]
    ]


async def test_a_posted_observation_is_stored_then_maps_to_a_canonical_observation(
    door, live_kafka, registry
):
    obs = observation()
    status, headers, body = await door.send("POST", "/Observation", obs)
    assert status == 201 and body is None
    assert headers["Location"].endswith(f"/fhir/Observation/{obs['id']}/_history/1")
    assert headers["ETag"] == 'W/"1"'
    [raw] = records_of(live_kafka, registry, door, obs["id"])
    assert raw["payload"] == json.dumps(obs, ensure_ascii=False).encode()
    assert (raw["protocol"], raw["connector"], raw["source_facility"], raw["source_application"]) == (
        "fhir",
        "fhir_rest",
        "CHU-TEST",
        "EDS",
    )
    assert raw["message_id"] == f"Observation/{obs['id']}/_history/1" and raw["message_type"] == "Observation"
    assert raw["content_type"] == FHIR and raw["attributes"]["credential"] == "token"
    assert raw["_kafka"][3] == b"CHU-TEST|EDS"  # the key names the sender, never the patient

    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), default_mappers()
    )
    partition, offset, value, _ = raw["_kafka"]
    outputs = normalizer.process(value, door.raw_topic, partition, offset)
    assert [o.topic for o in outputs] == ["canonical.observation"]
    canonical = normalizer.codecs["observation"].decode(outputs[0].value)
    assert canonical["code"]["code"] == obs["code"]["coding"][0]["code"]


async def test_put_stores_and_resend_of_the_same_version_stores_nothing_new(door, live_kafka, registry):
    patient = synthetic.fhir_patient(PATIENT) | {"id": new_id("pat")}
    first = await door.send("PUT", f"/Patient/{patient['id']}", patient)
    again = await door.send("PUT", f"/Patient/{patient['id']}", patient)
    assert first[0] == 200 and again[0] == 200
    assert first[1]["Location"] == again[1]["Location"]
    obs = observation(version=None)  # no version: named by its content
    query = f"identifier=urn:test|{obs['id']}"
    created = await door.send("POST", "/Observation", obs, **{"If-None-Exist": query})
    changed = observation(version=None)
    matched = await door.send("POST", "/Observation", changed, **{"If-None-Exist": query})
    assert (created[0], matched[0]) == (201, 200)
    assert matched[1]["Location"] == created[1]["Location"]
    assert len(records_of(live_kafka, registry, door, patient["id"])) == 1
    assert len(records_of(live_kafka, registry, door, obs["id"])) == 1
    assert records_of(live_kafka, registry, door, changed["id"]) == []


async def test_a_reused_version_id_with_other_bytes_is_stored_with_its_own_ids(door, live_kafka, registry):
    """Before: the second body under the same <type>/<id>/_history/<vid> was answered 200 from the
    resend index and never stored."""
    obs = observation(version="1")
    changed = json.loads(json.dumps(obs))
    changed["valueQuantity"]["value"] = changed["valueQuantity"]["value"] + 1
    answers = [
        await door.send("PUT", f"/Observation/{obs['id']}", doc) for doc in (obs, changed, changed, obs)
    ]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    raws = records_of(live_kafka, registry, door, obs["id"])
    assert len(raws) == 2, "the reused version is stored once; resends of either body store nothing"
    assert len({r["raw_id"] for r in raws}) == 2
    assert [bool(r["attributes"].get("content_digest")) for r in raws] == [False, True]
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), default_mappers()
    )
    events = set()
    for raw in raws:
        partition, offset, value, _ = raw["_kafka"]
        [out] = normalizer.process(value, door.raw_topic, partition, offset)
        events.add(normalizer.codecs["observation"].decode(out.value)["envelope"]["event_id"])
    assert len(events) == 2, "the second body does not collapse into the first downstream"


async def test_transaction_is_one_record_with_per_entry_results(door, live_kafka, registry):
    patient = synthetic.fhir_patient(PATIENT) | {"id": new_id("pat")}
    obs = observation()
    bundle = synthetic.fhir_bundle("transaction", [patient, obs]) | {"id": new_id("bundle")}
    status, _, body = await door.send("POST", "", bundle)
    assert status == 200 and body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created", "201 Created"]
    assert body["entry"][1]["response"]["location"] == f"Observation/{obs['id']}/_history/1"
    [raw] = records_of(live_kafka, registry, door, bundle["id"])
    assert raw["message_type"] == "Bundle/transaction"
    assert (
        len(
            Normalizer(
                registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), default_mappers()
            ).process(raw["_kafka"][2], door.raw_topic, raw["_kafka"][0], raw["_kafka"][1])
        )
        == 2
    )


async def test_batch_answers_each_entry_and_stores_only_the_valid_ones(door, live_kafka, registry):
    good, bad = observation(), observation()
    bad["valueQuantity"] = "not-a-quantity"
    status, _, body = await door.send("POST", "", synthetic.fhir_bundle("batch", [good, bad]))
    assert status == 200 and body["type"] == "batch-response"
    first, second = (e["response"] for e in body["entry"])
    assert first["status"] == "201 Created"
    assert second["status"] == "400"
    assert second["outcome"]["issue"][0]["expression"][0].startswith("Observation.valueQuantity")
    assert len(records_of(live_kafka, registry, door, good["id"])) == 1
    assert records_of(live_kafka, registry, door, bad["id"]) == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/Observation", {"content_type": "application/xml"}, 415, "not-supported"),
        (
            "POST",
            "/Observation",
            {"data": b'{"resourceType":"Observation","note":"' + b"x" * 70_000 + b'"}'},
            413,
            "too-costly",
        ),
        ("POST", "/Medication", {}, 404, "not-supported"),
        ("POST", "/Observation", {"data": b'{"resourceType": "Observation", "status": '}, 400, "invalid"),
        ("PUT", "/Observation/other-id", {}, 422, "invalid"),
        ("POST", "", {}, 422, "invalid"),
    ],
)
async def test_refusals_carry_status_and_operation_outcome(door, method, path, kwargs, status, code):
    got, headers, body = await door.send(method, path, kwargs.pop("doc", observation()), **kwargs)
    assert got == status
    assert headers["Content-Type"].startswith(FHIR)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == code


async def test_invalid_resource_outcome_names_the_path_and_echoes_no_value(door, live_kafka, registry):
    obs = observation()
    obs["subject"]["identifier"]["value"] = {"family": PATIENT.family}
    status, _, body = await door.send("POST", "/Observation", obs)
    assert status == 400
    issue = body["issue"][0]
    assert issue["expression"][0].startswith("Observation.subject")
    assert PATIENT.family not in json.dumps(body, ensure_ascii=False)
    assert records_of(live_kafka, registry, door, obs["id"]) == []


async def test_authentication_and_sender_binding(door):
    obs = observation()
    status, headers, body = await door.send("POST", "/Observation", obs, token=None)
    assert (
        status == 401
        and headers["WWW-Authenticate"].startswith("Bearer")
        and body["issue"][0]["code"] == "login"
    )
    status, headers, _ = await door.send("POST", "/Observation", obs, token="wrong-token")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, _, body = await door.send("POST", "/Observation", obs, **{"X-Affluent-Sender": "OTHER-CHU|EDS"})
    assert status == 403 and body["issue"][0]["code"] == "forbidden"
    expired = door.issuer.token("eds-client", exp=1)
    assert (await door.send("POST", "/Observation", obs, token=expired))[0] == 401
    assert (await door.send("POST", "/Observation", obs, token=door.issuer.token("stranger")))[0] == 403


async def test_a_jwt_client_writes_as_its_bound_sender(door, live_kafka, registry):
    obs = observation()
    token = door.issuer.token("eds-client")
    assert (await door.send("POST", "/Observation", obs, token=token))[0] == 201
    [raw] = records_of(live_kafka, registry, door, obs["id"])
    assert (raw["source_application"], raw["attributes"]["credential"]) == ("EDS-JWT", "jwt")
    status, _, _ = await door.send(
        "POST", "/Observation", observation(), token=token, **{"X-Affluent-Sender": SENDER}
    )
    assert status == 403


def notification(kind: str, *entries: dict) -> dict:
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "subscription",
                "valueReference": {"reference": "https://eds.test/fhir/Subscription/s1"},
            },
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
        ],
    }
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}, *entries]}


async def test_subscription_handshake_heartbeat_and_both_payload_kinds(door, live_kafka, registry):
    before = len(read_topic(live_kafka, registry, door.raw_topic))
    for kind in ("handshake", "heartbeat"):
        assert (await door.send("POST", "/subscription-notification", notification(kind)))[0] == 200
    assert len(read_topic(live_kafka, registry, door.raw_topic)) == before, (
        "no record for handshake/heartbeat"
    )

    full = observation()
    note = notification(
        "event-notification", {"fullUrl": f"https://eds.test/fhir/Observation/{full['id']}", "resource": full}
    )
    assert (await door.send("POST", "/subscription-notification", note))[0] == 200
    assert (await door.send("POST", "/subscription-notification", note))[0] == 200  # resent: stored once

    remote = observation()
    door.notified[remote["id"]] = remote
    id_only = notification(
        "event-notification", {"fullUrl": f"{door.notifier_base()}/Observation/{remote['id']}"}
    )
    assert (await door.send("POST", "/subscription-notification", id_only))[0] == 200
    assert door.fetched[-1] == (f"/fhir/Observation/{remote['id']}", f"Bearer {NOTIFIER_TOKEN}")

    missing = notification(
        "event-notification", {"fullUrl": f"{door.notifier_base()}/Observation/{new_id()}"}
    )
    status, headers, body = await door.send("POST", "/subscription-notification", missing)
    assert status == 503 and "Retry-After" in headers and body["issue"][0]["code"] == "transient"

    records = read_topic(live_kafka, registry, door.raw_topic)
    [stored_full] = [r for r in records if r["message_id"] == f"Observation/{full['id']}/_history/1"]
    [stored_remote] = [r for r in records if r["message_id"] == f"Observation/{remote['id']}/_history/1"]
    assert stored_full["attributes"]["subscription_payload"] == "full-resource"
    assert stored_remote["attributes"]["subscription_payload"] == "id-only"
    assert json.loads(stored_remote["payload"]) == remote
    assert len(records) == before + 2


async def test_jwt_keys_can_come_from_a_jwks_url(door):
    settings = FhirRestSettings(
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_url=f"http://127.0.0.1:{door.eds_port}/jwks.json",
        jwt_subjects={"eds-client": "CHU-TEST|EDS-JWT"},
    )
    auth = Authenticator(settings)
    assert auth.needs_thread  # the key set is fetched over HTTP, off the event loop
    token = f"Bearer {door.issuer.token('eds-client')}"
    sender = await asyncio.to_thread(auth.authenticate, token, None)
    assert (sender.name, sender.credential) == ("CHU-TEST|EDS-JWT", "jwt")
    other_key = JwtIssuer(door.issuer.jwks_file.parent / "other")
    with pytest.raises(Unauthenticated):
        await asyncio.to_thread(auth.authenticate, f"Bearer {other_key.token('eds-client')}", None)


async def test_capability_statement_and_unserved_routes_answer_in_fhir(door):
    async with door.session.get(door.base + "/metadata") as response:
        assert response.status == 200
        statement = await response.json(content_type=None)
    validate_resource(statement, "CapabilityStatement")
    assert {r["type"] for r in statement["rest"][0]["resource"]} >= {"Observation", "Patient", "Bundle"}
    async with door.session.get(
        door.base + "/Observation/obs-1", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 405
        outcome = await response.json(content_type=None)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "not-supported"


async def test_batch_resend_and_if_none_exist_entries_store_nothing_new(door, live_kafka, registry):
    first, second = observation(), observation(version=None)
    bundle = synthetic.fhir_bundle("batch", [first, second])
    query = f"identifier=urn:test|{second['id']}"
    bundle["entry"][1]["request"]["ifNoneExist"] = query
    status, _, body = await door.send("POST", "", bundle)
    assert status == 200 and [e["response"]["status"] for e in body["entry"]] == [
        "201 Created",
        "201 Created",
    ]
    status, _, again = await door.send("POST", "", bundle)
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK", "200 OK"]
    assert again["entry"][0]["response"]["location"] == body["entry"][0]["response"]["location"]
    other = observation(version=None)
    conditional = synthetic.fhir_bundle("batch", [other])
    conditional["entry"][0]["request"]["ifNoneExist"] = query
    status, _, matched = await door.send("POST", "", conditional)
    assert matched["entry"][0]["response"]["status"] == "200 OK"
    records = read_topic(live_kafka, registry, door.raw_topic)
    for resource, expected in ((first, 1), (second, 1), (other, 0)):
        assert sum(resource["id"].encode() in r["payload"] for r in records) == expected


async def test_delete_is_stored_and_becomes_a_retraction(door, live_kafka, registry):
    target = new_id()
    status, headers, body = await door.send(
        "DELETE", f"/Observation/{target}", data=b"", **{"If-Match": 'W/"2"'}
    )
    assert status == 204 and body is None and "Location" not in headers
    assert (await door.send("DELETE", f"/Observation/{target}", data=b"", **{"If-Match": 'W/"2"'}))[0] == 200
    assert (await door.send("DELETE", f"/Medication/{target}", data=b""))[0] == 404
    [raw] = records_of(live_kafka, registry, door, target)
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), default_mappers()
    )
    partition, offset, value, _ = raw["_kafka"]
    assert [o.topic for o in normalizer.process(value, door.raw_topic, partition, offset)] == [
        "canonical.retraction"
    ]
