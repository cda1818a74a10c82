"""FHIR REST door, pure parts: what a body becomes (records, refusals), notifications, senders."""

from __future__ import annotations

import json
import pickle
import random
from datetime import UTC, datetime

import pytest

from affluent.core.settings import FhirNotifierSettings, FhirRestSettings
from affluent.sim import synthetic
from connectors.fhir_rest import fetch, intake
from connectors.fhir_rest.auth import Authenticator, Unauthenticated, token_digest
from connectors.fhir_rest.intake import Refusal
from connectors.fhir_rest.notification import read_notification
from formats.fhir.common import media_type_accepted, operation_outcome

RNG = random.Random(3)
PATIENT = synthetic.patient(RNG, 1)
WHEN = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def observation(obs_id: str = "obs-1", **changes):
    return {**synthetic.fhir_observation(random.Random(1), PATIENT, obs_id, WHEN), **changes}


def body(resource) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode()


def refusal_of(call, *args) -> Refusal:
    with pytest.raises(Refusal) as caught:
        call(*args)
    return caught.value


def test_a_posted_resource_is_stored_untouched_with_its_version_name():
    payload = body(observation())
    item = intake.resource_item(payload, "Observation")
    assert item.payload == payload
    assert (item.status, item.message_id, item.location) == (
        201,
        "Observation/obs-1/_history/1",
        item.location,
    )
    assert item.location == "Observation/obs-1/_history/1"


def test_without_a_version_the_record_is_named_by_its_content():
    resource = observation()
    del resource["meta"]
    item = intake.resource_item(body(resource), "Observation")
    assert item.message_id is None and len(item.effective_message_id) == 64


def test_put_answers_200_and_needs_the_url_id():
    assert intake.resource_item(body(observation()), "Observation", "obs-1").status == 200
    assert refusal_of(intake.resource_item, body(observation()), "Observation", "obs-2").status == 422


@pytest.mark.parametrize(
    ("payload", "url_type", "status"),
    [
        (b"{not json", "Observation", 400),
        (b"[1]", "Observation", 400),
        (body(observation()), "Patient", 400),
        (body(observation()), "Medication", 404),
        (body(observation(status="nonsense-status-Zoé", unknownElement=1)), "Observation", 400),
    ],
)
def test_refusals_have_a_status_and_a_content_free_outcome(payload, url_type, status):
    refusal = refusal_of(intake.resource_item, payload, url_type)
    assert refusal.status == status
    text = json.dumps(operation_outcome(refusal.issues), ensure_ascii=False)
    assert "Zoé" not in text and PATIENT.ipp not in text and PATIENT.family not in text


def test_an_invalid_resource_names_the_path():
    resource = observation()
    resource["valueQuantity"]["value"] = {"nested": "object"}
    refusal = refusal_of(intake.resource_item, body(resource), "Observation")
    assert refusal.issues[0].expression and refusal.issues[0].expression.startswith(
        "Observation.valueQuantity"
    )


def test_a_transaction_is_one_record_with_per_entry_answers():
    bundle = synthetic.fhir_bundle("transaction", [synthetic.fhir_patient(PATIENT), observation()])
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Observation/obs-0"}})
    plan = intake.bundle_plan(body(bundle))
    assert plan.kind == "transaction" and len(plan.items) == 1
    assert [e.status for e in plan.entries] == [201, 201, 204]
    assert plan.entries[1].location == "Observation/obs-1/_history/1"


def test_one_bad_entry_refuses_a_transaction_but_only_itself_in_a_batch():
    bad = observation("obs-bad", status={"not": "a code"})
    for kind in ("transaction", "collection"):
        bundle = synthetic.fhir_bundle(kind, [observation(), bad])
        assert refusal_of(intake.bundle_plan, body(bundle)).status == 400
    plan = intake.bundle_plan(body(synthetic.fhir_bundle("batch", [observation(), bad])))
    assert [e.status for e in plan.entries] == [201, 400]
    assert len(plan.items) == 1 and json.loads(plan.items[0].payload)["id"] == "obs-1"


def test_batch_delete_travels_as_a_one_entry_bundle():
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": "Observation/x"}}],
    }
    [entry] = intake.bundle_plan(body(bundle)).entries
    assert entry.status == 204 and entry.item is not None
    assert json.loads(entry.item.payload)["entry"][0]["request"]["method"] == "DELETE"


def test_only_batch_transaction_and_collection_go_to_the_base():
    assert refusal_of(intake.bundle_plan, body({"resourceType": "Bundle", "type": "searchset"})).status == 422
    assert refusal_of(intake.bundle_plan, body(observation())).status == 422
    for wrong in ({"a": 1}, ["batch"], 7, None):  # a dict here raised TypeError: a 500 "resending is safe"
        assert refusal_of(intake.bundle_plan, body({"resourceType": "Bundle", "type": wrong})).status == 422


def status(kind: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": kind}]}


def notification(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status(kind)}, *entries]}


def test_handshake_and_heartbeat_carry_nothing():
    for kind in ("handshake", "heartbeat"):
        note = read_notification(notification(kind))
        assert note.kind == kind and not note.carries_data


def test_event_notifications_give_resources_or_references():
    full = read_notification(notification("event-notification", {"resource": observation()}))
    assert [r["id"] for _, r in full.resources] == ["obs-1"] and not full.references
    ids = read_notification(
        notification("event-notification", {"fullUrl": "https://eds.test/fhir/Observation/o"})
    )
    assert ids.references == ["https://eds.test/fhir/Observation/o"] and not ids.resources


def test_id_only_without_entries_uses_the_focus():
    st = status("event-notification")
    st["parameter"].append(
        {
            "name": "notification-event",
            "part": [{"name": "focus", "valueReference": {"reference": "Observation/o"}}],
        }
    )
    note = read_notification({"resourceType": "Bundle", "type": "history", "entry": [{"resource": st}]})
    assert note.references == ["Observation/o"]


def test_not_a_notification_is_refused():
    assert refusal_of(read_notification, {"resourceType": "Bundle", "type": "batch"}).status == 422
    assert refusal_of(read_notification, notification("nonsense")).status == 422


def test_only_references_under_the_notifier_base_are_fetched():
    notifier = FhirNotifierSettings(base_url="https://eds.test/fhir")
    assert fetch.resolve("Observation/o", notifier) == "https://eds.test/fhir/Observation/o"
    assert (
        fetch.resolve("https://eds.test/fhir/Observation/o", notifier)
        == "https://eds.test/fhir/Observation/o"
    )
    for evil in (
        "https://elsewhere.test/fhir/Observation/o",
        "https://eds.test/fhirx/O/1",
        "../secret",
        "urn:uuid:1",
    ):
        assert refusal_of(fetch.resolve, evil, notifier).status == 422


def test_media_types():
    assert media_type_accepted("application/fhir+json", None)
    assert media_type_accepted("application/json", "UTF-8")
    assert not media_type_accepted("application/fhir+json", "iso-8859-1")
    assert not media_type_accepted("application/xml", None)


def test_a_static_token_is_bound_to_one_sender():
    auth = Authenticator(FhirRestSettings(token_sha256={token_digest("s3cret-test-token"): "CHU|EDS"}))
    sender = auth.authenticate("Bearer s3cret-test-token", None)
    assert (sender.facility, sender.application, sender.credential) == ("CHU", "EDS", "token")
    assert auth.authenticate("Bearer s3cret-test-token", None, "CHU|EDS").name == "CHU|EDS"
    with pytest.raises(Refusal) as caught:
        auth.authenticate("Bearer s3cret-test-token", None, "OTHER|EDS")
    assert caught.value.status == 403
    for header in (None, "Bearer wrong", "Basic dXNlcjpwYXNz"):
        with pytest.raises(Unauthenticated) as denied:
            auth.authenticate(header, None)
        assert denied.value.status == 401 and denied.value.challenge.startswith("Bearer")


def test_a_certificate_subject_names_its_sender():
    settings = FhirRestSettings(tls_client_ca="/dev/null", tls_subjects={"lab-gw": "CHU|LAB"})
    assert Authenticator(settings).authenticate(None, "lab-gw").name == "CHU|LAB"
    with pytest.raises(Unauthenticated):
        Authenticator(settings).authenticate(None, "someone-else")


def test_senders_must_be_facility_and_application():
    with pytest.raises(ValueError, match="facility"):
        FhirRestSettings(token_sha256={token_digest("t"): "CHU-only"})


def test_refusals_survive_pickling_for_the_validation_processes():
    refusal = refusal_of(intake.bundle_plan, body({"resourceType": "Bundle", "type": "searchset"}))
    again = pickle.loads(pickle.dumps(refusal))
    assert (again.status, again.issues) == (refusal.status, refusal.issues)
    plan = intake.bundle_plan(
        body(synthetic.fhir_bundle("batch", [observation(), observation(status={"x": 1})]))
    )
    copied = pickle.loads(pickle.dumps(plan))
    assert copied.items == plan.items and [e.status for e in copied.entries] == [201, 400]
    assert (
        copied.entries[1].refusal is not None
        and copied.entries[1].refusal.issues == plan.entries[1].refusal.issues
    )
    denied = pickle.loads(pickle.dumps(Unauthenticated("the token is not valid", "invalid_token")))
    assert denied.status == 401 and 'error="invalid_token"' in denied.challenge


def test_r4b_subscription_status_notifications_are_read_too():
    st = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "notificationEvent": [{"eventNumber": "3", "focus": {"reference": "Observation/o-3"}}],
    }
    note = read_notification(
        {"resourceType": "Bundle", "type": "subscription-notification", "entry": [{"resource": st}]}
    )
    assert note.kind == "event-notification" and note.references == ["Observation/o-3"]
    beat = read_notification(
        {
            "resourceType": "Bundle",
            "type": "subscription-notification",
            "entry": [{"resource": st | {"type": "heartbeat"}}],
        }
    )
    assert beat.kind == "heartbeat" and not beat.carries_data


def test_what_the_door_stores_is_what_the_normalize_mapper_maps():
    from streams.normalize.envelope import RawContext
    from streams.normalize.fhir import map_fhir
    from streams.normalize.options import MappingOptions

    ctx = RawContext("raw", "fhir", "fhir_rest", "CHU-TEST", "EDS", "msg", WHEN)
    delete = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": "Observation/x"}}],
    }
    [entry] = intake.bundle_plan(body(delete)).entries
    assert entry.item is not None and [
        e.kind for e in map_fhir(entry.item.payload, ctx, MappingOptions())
    ] == ["retraction"]
    batch = intake.bundle_plan(body(synthetic.fhir_bundle("batch", [observation()])))
    assert [e.kind for e in map_fhir(batch.items[0].payload, ctx, MappingOptions())] == ["observation"]
    transaction = intake.bundle_plan(
        body(synthetic.fhir_bundle("transaction", [synthetic.fhir_patient(PATIENT), observation()]))
    )
    kinds = sorted(e.kind for e in map_fhir(transaction.items[0].payload, ctx, MappingOptions()))
    assert kinds == ["observation", "patient"]
