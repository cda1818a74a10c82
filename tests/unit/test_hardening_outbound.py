"""Issue #18 (a hostile network), the pure half: what an id-only notification may make the door fetch,
which JWT configurations load, how many Bundle entries are read, where the puller's token may go.

The socket half (connection caps, timeouts, the door and the puller against real servers) is in
tests/integration/test_hardening_outbound*.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from affluent.core.errors import ConfigError, FhirSourceError
from affluent.core.settings import FhirNotifierSettings, FhirRestSettings, load_settings
from connectors.fhir_rest.intake import Refusal
from tests.support.fhir_door import AUDIENCE, ISSUER, JwtIssuer

BASE = "https://eds.test/fhir"
NOTIFIER = FhirNotifierSettings(base_url=BASE)


# --- 1. id-only references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        f"{BASE}/../admin/Observation/1",
        f"{BASE}/%2e%2e/admin/Observation/1",
        f"{BASE}/%2E%2e/%2e%2E/Observation/1",
        f"{BASE}/Observation/%2e%2e/%2e%2e/%2e%2e/secret",
        f"{BASE}/.%2e/admin/Observation/1",
        f"{BASE}/%252e%252e/admin/Observation/1",  # decoded twice by a lenient server
        f"{BASE}/Observation%2f..%2f..%2fadmin",
        f"{BASE}/Observation%2F1",
        f"{BASE}/Observation%5c1",
        f"{BASE}/Observation/1/..;/..;/admin",
        "../admin/Observation/1",
        "Observation/../../admin",
        "Observation/%2e%2e",
        "https://eds.test:8443/fhir/Observation/1",  # another port
        "http://eds.test/fhir/Observation/1",  # another scheme
        "https://eds.test.evil.example/fhir/Observation/1",
        "https://eds.test@evil.example/fhir/Observation/1",
        "//evil.example/fhir/Observation/1",
        "https://eds.test/fhirx/Observation/1",
        f"{BASE}/Observation/1?_format=xml",
        f"{BASE}/Observation?code=1234",
        f"{BASE}/Observation",
        "urn:uuid:7f1c1e1e-0000-4000-8000-000000000000",
    ],
)
def test_a_reference_leaving_the_notifiers_base_is_refused_with_a_4xx(reference: str) -> None:
    from connectors.fhir_rest.fetch import resolve

    with pytest.raises(Refusal) as refused:
        resolve(reference, NOTIFIER)
    assert 400 <= refused.value.status < 500
    assert "eds" not in refused.value.issues[0].diagnostics  # names no part of the reference


@pytest.mark.parametrize(
    ("reference", "fetched"),
    [
        ("Observation/obs-1", f"{BASE}/Observation/obs-1"),
        (f"{BASE}/Observation/obs-1/_history/2", f"{BASE}/Observation/obs-1/_history/2"),
        ("https://EDS.test:443/fhir/Observation/obs-1", "https://EDS.test:443/fhir/Observation/obs-1"),
        (f"{BASE}/x/../Observation/obs-1", f"{BASE}/Observation/obs-1"),  # ends under the base: fine
        (f"{BASE}/%2e/Observation/obs-1", f"{BASE}/Observation/obs-1"),
    ],
)
def test_a_read_under_the_base_is_fetched_in_its_normalised_form(reference: str, fetched: str) -> None:
    from connectors.fhir_rest.fetch import resolve

    assert resolve(reference, NOTIFIER) == fetched


def test_the_notifier_caps_have_defaults() -> None:
    assert (NOTIFIER.max_references, NOTIFIER.max_fetch_bytes) == (100, None)


# --- 3. JWT configuration ---------------------------------------------------------------------------


def jwt_settings(tmp_path: Path, **changes: object) -> dict[str, object]:
    issuer = JwtIssuer(tmp_path)
    fields: dict[str, object] = {
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_jwks_file": str(issuer.jwks_file),
        "jwt_subjects": {"eds-client": "CHU-TEST|EDS-JWT"},
    }
    fields.update(changes)
    return fields


def test_jwt_without_an_audience_does_not_load(tmp_path: Path) -> None:
    fields = jwt_settings(tmp_path)
    del fields["jwt_audience"]
    with pytest.raises(ConfigError, match="jwt_audience") as error:
        load_settings(fhir_rest=fields)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("algorithm", ["HS256", "HS512", "none", "RS257"])
def test_a_symmetric_or_unknown_jwt_algorithm_is_one_settings_line(tmp_path: Path, algorithm: str) -> None:
    with pytest.raises(ConfigError, match=f"jwt_algorithms: {algorithm} not allowed") as error:
        load_settings(fhir_rest=jwt_settings(tmp_path, jwt_algorithms=["ES256", algorithm]))
    assert "\n" not in str(error.value)


def test_every_asymmetric_algorithm_loads(tmp_path: Path) -> None:
    every = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
    assert (
        load_settings(fhir_rest=jwt_settings(tmp_path, jwt_algorithms=every)).fhir_rest.jwt_algorithms
        == every
    )


@pytest.mark.parametrize(
    ("url", "loads"),
    [
        ("http://idp.example/realms/affluent/certs", False),
        ("http://10.1.2.3/certs", False),
        ("https://idp.example/realms/affluent/certs", True),
        ("http://127.0.0.1:8443/certs", True),  # loopback never leaves the machine
    ],
)
def test_a_jwks_url_must_be_https(tmp_path: Path, url: str, loads: bool) -> None:
    fields = jwt_settings(tmp_path, jwt_jwks_url=url)
    del fields["jwt_jwks_file"]
    if loads:
        assert load_settings(fhir_rest=fields).fhir_rest.jwt_jwks_url == url
    else:
        with pytest.raises(ConfigError, match="jwt_jwks_url must be an https URL"):
            load_settings(fhir_rest=fields)


def test_tokens_without_or_with_another_audience_are_401(tmp_path: Path) -> None:
    from connectors.fhir_rest.auth import Authenticator, Unauthenticated

    fields = jwt_settings(tmp_path)
    issuer = JwtIssuer(tmp_path / "other")  # the same key file would be overwritten: a second issuer
    fields["jwt_jwks_file"] = str(issuer.jwks_file)
    auth = Authenticator(FhirRestSettings.model_validate(fields))
    assert auth.authenticate(f"Bearer {issuer.token('eds-client')}", None).name == "CHU-TEST|EDS-JWT"
    for token in (issuer.token("eds-client", aud=None), issuer.token("eds-client", aud="another-service")):
        with pytest.raises(Unauthenticated):
            auth.authenticate(f"Bearer {token}", None)


# --- 4. Bundle entries, validation off the loop ------------------------------------------------------


def bundle(kind: str, entries: int) -> bytes:
    obs = {  # a mappable one: the door refuses what the mapper would (formats/fhir/admission.py)
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]},
        "subject": {"reference": "Patient/p"},
    }
    entry = {"resource": obs, "request": {"method": "POST", "url": "Observation"}}
    return json.dumps({"resourceType": "Bundle", "type": kind, "entry": [entry] * entries}).encode()


@pytest.mark.parametrize("kind", ["batch", "transaction", "collection"])
def test_a_bundle_over_the_entry_cap_is_413_too_costly_before_any_entry_is_validated(kind: str) -> None:
    from connectors.fhir_rest.server import plan_bundle

    assert len(plan_bundle(bundle(kind, 3), 3).entries) == (3 if kind != "collection" else 0)
    with pytest.raises(Refusal) as refused:
        plan_bundle(bundle(kind, 4), 3)
    assert refused.value.status == 413
    assert (refused.value.issues[0].code, refused.value.issues[0].expression) == (
        "too-costly",
        "Bundle.entry",
    )


def test_a_notification_over_the_entry_cap_is_413() -> None:
    from connectors.fhir_rest.notification import read_notification
    from formats.fhir.validate import entry_cap

    status = {
        "resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": "event-notification"}],
    }
    entries = [{"resource": status}] + [{"fullUrl": f"{BASE}/Observation/{n}"} for n in range(10)]
    note = {"resourceType": "Bundle", "type": "history", "entry": entries}
    assert len(read_notification(note).references) == 10  # no cap outside the door
    with entry_cap(10), pytest.raises(Refusal) as refused:
        read_notification(note)
    assert (refused.value.status, refused.value.issues[0].code) == (413, "too-costly")


def test_defaults_cap_entries_and_validate_bundles_off_the_loop() -> None:
    defaults = FhirRestSettings()
    assert (defaults.max_bundle_entries, defaults.validation_processes) == (1000, 1)


def test_the_normalize_stage_reads_bundles_without_the_doors_cap() -> None:
    """The cap is the door's, set per request: a Bundle stored under a larger cap still maps."""
    from formats.fhir.validate import bundle_entry_cap, validate_bundle_shell

    assert bundle_entry_cap() is None
    validate_bundle_shell(json.loads(bundle("collection", 1500)))


# --- 2. the puller: plain http, pinned origin --------------------------------------------------------


def source(base_url: str, **changes: object):  # type: ignore[no-untyped-def]
    from connectors.fhir_poll.config import SourceConfig

    return SourceConfig(name="eds", base_url=base_url, facility="CHU-TEST", **changes)  # type: ignore[arg-type]


def test_a_plain_http_source_beyond_loopback_is_refused_unless_allowed() -> None:
    from connectors.fhir_poll.config import check_transport

    with pytest.raises(ConfigError, match="allow_plaintext"):
        check_transport(source("http://eds.chu.example/fhir"))
    check_transport(source("http://eds.chu.example/fhir", allow_plaintext=True))
    check_transport(source("http://eds.chu.example/fhir"), allow_plaintext=True)  # the settings' switch
    check_transport(source("https://eds.chu.example/fhir"))
    check_transport(source("http://127.0.0.1:8080/fhir"))
    with pytest.raises(ValueError, match="user info"):
        source("https://eds.chu.example@evil.example/fhir")


async def test_the_pinned_client_sends_no_token_off_its_origin() -> None:
    from affluent.core.origins import origin_of
    from connectors.fhir_poll.http import FhirHttp, TokenSource

    class Token(TokenSource):
        async def headers(self) -> dict[str, str]:
            return {"Authorization": "Bearer secret-test-token"}

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        http = FhirHttp(client, "eds", Token(), origin=origin_of("https://eds.test/fhir"))
        await http.get("https://eds.test:443/fhir/Patient", "search")
        for elsewhere in (
            "https://evil.example/fhir/Patient",
            "https://eds.test:8443/fhir/Patient",
            "http://eds.test/fhir/Patient",
        ):
            with pytest.raises(FhirSourceError, match=r"outside|https"):
                await http.get(elsewhere, "search")
        with pytest.raises(FhirSourceError, match="not an https URL"):  # even without the token
            await http.request("GET", "http://files.example/1.ndjson", "bulk file", authenticated=False)
        await http.request("GET", "https://files.example/1.ndjson", "bulk file", authenticated=False)
    assert [str(r.url) for r in seen] == ["https://eds.test/fhir/Patient", "https://files.example/1.ndjson"]
    assert "Authorization" not in seen[1].headers


# --- 5. nesting ---------------------------------------------------------------------------------------


def test_an_ndjson_line_nested_too_deep_is_a_dead_letter_not_a_crash() -> None:
    from connectors.fhir_poll.records import ndjson_line

    deep = b"[" * 100_000 + b"]" * 100_000
    resource, payload, reason = ndjson_line(7, deep)  # type: ignore[misc]
    assert (resource, payload, reason) == (None, deep, "NDJSON line 7 is not JSON")
