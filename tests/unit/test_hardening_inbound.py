"""A hostile network, inbound (issue #18): what the doors refuse before and while they listen.

1. a door beyond loopback without its protections refuses to start (one line, non-zero exit), unless
   its ``allow_plaintext`` setting says so, which is then logged as a warning;
3. the MQTT door refuses a broker beyond loopback without credentials (and TLS);
4. a reading of a device bound to another sender is refused (HTTP 403) and dead-lettered;
5. key files others can read are refused, keys reach only the children that use them, and one reading
   of a certificate's common name serves every door.

No broker here: every refusal happens before a door touches Kafka (the real MQTT broker, Kafka and TLS
handshakes are in tests/integration/test_hardening_inbound*.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from affluent.components import COMPONENTS, select
from affluent.core.errors import ConfigError
from affluent.core.settings import (
    DeviceMqttSettings,
    DeviceSettings,
    DeviceToken,
    FhirRestSettings,
    KafkaSettings,
    MllpSettings,
    OppositionSettings,
    Settings,
    load_settings,
)
from affluent.core.tls import check_key_file, is_loopback, refuse_unprotected, server_context, subject_cn
from affluent.run import child_environment, preflight
from connectors.devices.http import DeviceHttpServer
from connectors.devices.intake import token_hash
from connectors.devices.metrics import DeviceMetrics
from connectors.devices.mqtt import DeviceMqttDoor, Received, gateway_of
from connectors.devices.service import check_exposure as devices_check
from connectors.fhir_rest.server import tls_subject
from connectors.fhir_rest.service import FhirRestService
from connectors.fhir_rest.service import check_exposure as fhir_check
from connectors.mllp.server import _peer, tls_context
from connectors.mllp.service import MllpService
from connectors.mllp.service import check_exposure as mllp_check
from formats.devices.registry import DeviceRegistry, Link, add_link, decode_links, encode_links
from formats.devices.templates import load_templates
from formats.reasons import ReasonCode
from streams.opposition.http import check_exposure as opposition_check
from streams.pseudonymize.worker import load_keys
from tests.support.certs import TestPki
from tests.support.devices import sample

ROOT = Path(__file__).resolve().parents[2]
KEY_FIXTURE = ROOT / "tests" / "fixtures" / "keys" / "test-keys.json"
BEYOND = "0.0.0.0"


# --- the shared rule: what is loopback --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.0.2.10", False),
        ("fe80::1", False),
        ("localhost.example.org", False),
        ("mllp.chu.example", False),
    ],
)
def test_only_127_8_1_and_localhost_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_refusal_is_one_line_naming_the_settings_and_allow_plaintext_warns(caplog) -> None:
    with pytest.raises(ConfigError) as refused:
        refuse_unprotected(
            "the X door",
            BEYOND,
            ["TLS (AFFLUENT_X__TLS)"],
            allow_plaintext=False,
            allow_setting="AFFLUENT_X__ALLOW_PLAINTEXT",
        )
    text = str(refused.value)
    assert "\n" not in text and "AFFLUENT_X__TLS" in text and "AFFLUENT_X__ALLOW_PLAINTEXT=true" in text
    refuse_unprotected("the X door", "127.0.0.1", ["TLS"], allow_plaintext=False, allow_setting="A")
    with caplog.at_level(logging.WARNING, logger="affluent.core.tls"):
        refuse_unprotected(
            "the X door", BEYOND, ["TLS"], allow_plaintext=True, allow_setting="AFFLUENT_X__ALLOW_PLAINTEXT"
        )
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "AFFLUENT_X__ALLOW_PLAINTEXT" in caplog.records[0].getMessage()


# --- 1. every door refuses to listen beyond loopback unprotected --------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki(tmp_path / "pki")


def test_mllp_beyond_loopback_needs_tls_client_certificates_and_the_allow_list(pki: TestPki) -> None:
    server = pki.issue("mllp.test", server=True)
    mllp_check(MllpSettings())  # loopback by default: nothing asked
    with pytest.raises(ConfigError) as refused:
        mllp_check(MllpSettings(host=BEYOND))
    for name in (
        "AFFLUENT_MLLP__TLS_CERTIFICATE",
        "AFFLUENT_MLLP__TLS_CLIENT_CA",
        "AFFLUENT_MLLP__TLS_ALLOWED_SUBJECTS",
    ):
        assert name in str(refused.value)
    tls = {"host": BEYOND, "tls_certificate": server.cert, "tls_key": server.key}
    with pytest.raises(ConfigError, match="client certificates"):  # TLS alone does not say who sends
        mllp_check(MllpSettings(**tls))
    with pytest.raises(ConfigError, match="client certificates"):  # optional ones do not either
        mllp_check(MllpSettings(**tls, tls_client_ca=pki.ca.cert))
    mtls = {**tls, "tls_client_ca": pki.ca.cert, "tls_require_client_certificate": True}
    with pytest.raises(ConfigError, match="allow-list") as refused:
        mllp_check(MllpSettings(**mtls))
    assert "TLS (" not in str(refused.value)
    mllp_check(MllpSettings(**mtls, tls_allowed_subjects={"CHU-A": ["lis.chu-a.test"]}))


def test_mllp_allow_plaintext_starts_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        mllp_check(MllpSettings(host=BEYOND, allow_plaintext=True))
    assert any("AFFLUENT_MLLP__ALLOW_PLAINTEXT" in r.getMessage() for r in caplog.records)


def test_the_environment_variable_allows_plaintext(monkeypatch) -> None:
    monkeypatch.setenv("AFFLUENT_MLLP__HOST", BEYOND)
    monkeypatch.setenv("AFFLUENT_MLLP__ALLOW_PLAINTEXT", "true")
    settings = load_settings()  # settings alone never refuse: CLI commands that only read them work
    assert settings.mllp.allow_plaintext is True
    mllp_check(settings.mllp)


def test_fhir_devices_and_opposition_beyond_loopback_need_tls(pki: TestPki, caplog) -> None:
    server = pki.issue("door.test", server=True)
    tls = {"tls_certificate": server.cert, "tls_key": server.key}
    checks: list[tuple[Any, Any, str]] = [
        (fhir_check, FhirRestSettings, "AFFLUENT_FHIR_REST__"),
        (devices_check, DeviceSettings, "AFFLUENT_DEVICES__"),
        (opposition_check, OppositionSettings, "AFFLUENT_OPPOSITION__"),
    ]
    for check, model, prefix in checks:
        check(model())
        with pytest.raises(ConfigError) as refused:
            check(model(host=BEYOND))
        assert f"{prefix}TLS_CERTIFICATE" in str(refused.value) and f"{prefix}ALLOW_PLAINTEXT" in str(
            refused.value
        )
        check(model(host=BEYOND, **tls))
        with caplog.at_level(logging.WARNING):
            check(model(host=BEYOND, allow_plaintext=True))
        assert f"{prefix}ALLOW_PLAINTEXT" in caplog.records[-1].getMessage()


def test_opposition_settings_take_tls_certificate_and_key_together(pki: TestPki) -> None:
    server = pki.issue("opposition.test", server=True)
    with pytest.raises(ValueError, match="go together"):
        OppositionSettings(tls_certificate=server.cert)
    assert OppositionSettings(tls_certificate=server.cert, tls_key=server.key).tls_key == server.key


async def test_doors_refuse_at_start_before_touching_kafka() -> None:
    """A start-up check, not a settings validator: the refusal comes at once, Kafka unreachable."""
    dead = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    for service, section, value in (
        (MllpService, "mllp", MllpSettings(host=BEYOND, port=0)),
        (FhirRestService, "fhir_rest", FhirRestSettings(host=BEYOND, port=0)),
    ):
        settings = Settings(kafka=dead, **{section: value})
        with pytest.raises(ConfigError, match="beyond loopback"):
            await service(settings, CollectorRegistry()).start(with_telemetry=False)


# --- the real CLI entries: one line, non-zero exit, no traceback --------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_")}
    return subprocess.run(
        [sys.executable, "-m", "affluent.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, "AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", **env},
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("affluent: error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize(
    ("argv", "env", "phrase"),
    [
        (("mllp",), {"AFFLUENT_MLLP__HOST": BEYOND}, "AFFLUENT_MLLP__ALLOW_PLAINTEXT"),
        (("fhir",), {"AFFLUENT_FHIR_REST__HOST": BEYOND}, "AFFLUENT_FHIR_REST__ALLOW_PLAINTEXT"),
        (("devices", "serve"), {"AFFLUENT_DEVICES__HOST": BEYOND}, "AFFLUENT_DEVICES__ALLOW_PLAINTEXT"),
        (("run", "--only", "mllp"), {"AFFLUENT_MLLP__HOST": BEYOND}, "AFFLUENT_MLLP__TLS_ALLOWED_SUBJECTS"),
        (
            ("run", "--only", "fhir"),
            {"AFFLUENT_FHIR_REST__HOST": "::"},
            "AFFLUENT_FHIR_REST__TLS_CERTIFICATE",
        ),
        (
            ("run", "--only", "devices"),
            {"AFFLUENT_DEVICES__HOST": BEYOND},
            "AFFLUENT_DEVICES__TLS_CERTIFICATE",
        ),
        (
            ("run", "--only", "opposition"),
            {"AFFLUENT_OPPOSITION__HOST": BEYOND, "AFFLUENT_OPPOSITION__TOKENS": "{}"},
            "AFFLUENT_OPPOSITION__TLS_CERTIFICATE",
        ),
    ],
    ids=["mllp", "fhir", "devices", "run-mllp", "run-fhir", "run-devices", "run-opposition"],
)
def test_cli_refuses_an_unprotected_door_in_one_line(argv, env, phrase, tmp_path: Path) -> None:
    result = run_cli(*argv, env={**env, "AFFLUENT_RUN__LOG_DIR": str(tmp_path / "run")})
    assert_one_line_refusal(result, "beyond loopback", phrase)
    assert not (tmp_path / "run").exists()  # `affluent run` refused before starting any child


# --- 3. the MQTT door and its broker ------------------------------------------------------------------


def mqtt(**fields: Any) -> DeviceSettings:
    base: dict[str, Any] = {"enabled": True, "topics": {"tele/+/gateway-batch": "gateway-batch"}}
    return DeviceSettings(mqtt=DeviceMqttSettings(**{**base, **fields}))


def test_mqtt_broker_beyond_loopback_needs_credentials_and_tls(pki: TestPki, caplog) -> None:
    devices_check(mqtt())  # a local broker: as the demo runs it
    with pytest.raises(ConfigError, match="AFFLUENT_DEVICES__MQTT__USERNAME") as refused:
        devices_check(mqtt(host="192.0.2.10"))
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="credentials"):  # allow_plaintext never waives credentials
        devices_check(mqtt(host="192.0.2.10", allow_plaintext=True))
    creds = {"host": "broker.example", "username": "affluent-devices", "password": SecretStr("x")}
    with pytest.raises(ConfigError, match="AFFLUENT_DEVICES__MQTT__TLS_CA"):
        devices_check(mqtt(**creds))
    devices_check(mqtt(**creds, tls_ca=pki.ca.cert))
    with caplog.at_level(logging.WARNING):
        devices_check(mqtt(**creds, allow_plaintext=True))
    assert "AFFLUENT_DEVICES__MQTT__ALLOW_PLAINTEXT" in caplog.records[-1].getMessage()


def test_cli_refuses_a_remote_broker_without_credentials() -> None:
    env = {
        "AFFLUENT_DEVICES__MQTT__ENABLED": "true",
        "AFFLUENT_DEVICES__MQTT__HOST": "192.0.2.10",
        "AFFLUENT_DEVICES__MQTT__TOPICS": '{"tele/+/gateway-batch": "gateway-batch"}',
    }
    assert_one_line_refusal(run_cli("devices", "serve", env=env), "AFFLUENT_DEVICES__MQTT__PASSWORD")


@pytest.mark.parametrize(
    ("topic", "gateway"),
    [
        ("tele/GW-17/gateway-batch", "GW-17"),
        ("tele/GW-17/other", None),  # no filter matches
        ("fixed/topic", None),  # a filter without + names no gateway
    ],
)
def test_the_gateway_is_the_level_of_the_first_plus(topic: str, gateway: str | None) -> None:
    topics = {"tele/+/gateway-batch": "gateway-batch", "fixed/topic": "bp-single", "x/+/+/y": "bp-single"}
    assert gateway_of(topics, topic) == gateway
    assert gateway_of(topics, "x/a/b/y") == "a"


# --- 4. readings bound to their sender ----------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WHEN = datetime(2026, 11, 24, 7, 15, tzinfo=UTC)


def registry_of(links: dict[str, Link]) -> DeviceRegistry:
    return DeviceRegistry({d: encode_links(d, add_link([], link)) for d, link in links.items()}.get)


def test_a_device_linked_to_a_gateway_admits_that_sender_only() -> None:
    registry = registry_of({"BOUND": Link("1", "1.2.3", T0, gateway="GW-A"), "FREE": Link("2", "1.2.3", T0)})
    assert registry.may_send("BOUND", WHEN, "GW-A", require_binding=False)
    assert not registry.may_send("BOUND", WHEN, "GW-B", require_binding=False)
    assert not registry.may_send("BOUND", WHEN, None, require_binding=False)
    assert registry.may_send("FREE", WHEN, "GW-B", require_binding=False)  # registries of before
    assert not registry.may_send("FREE", WHEN, "GW-B", require_binding=True)
    assert registry.may_send("UNKNOWN", WHEN, "GW-B", require_binding=False)  # normalize dead-letters it
    assert not registry.may_send("UNKNOWN", WHEN, "GW-B", require_binding=True)
    assert not registry.may_send("BOUND", T0.replace(year=2025), "GW-A", require_binding=True)  # not yet


def test_the_gateway_survives_the_registry_round_trip_and_a_new_holder() -> None:
    first = add_link([], Link("1", "1.2.3", T0, gateway="GW-A"))
    handed_on = add_link(first, Link("2", "1.2.3", WHEN, gateway="GW-B"))
    assert decode_links(encode_links("D", handed_on)) == handed_on
    registry = DeviceRegistry({"D": encode_links("D", handed_on)}.get)
    assert registry.may_send("D", T0.replace(month=6), "GW-A", False)  # the reading's time decides
    assert not registry.may_send("D", WHEN, "GW-A", False)
    assert b"gateway" not in encode_links("D", [Link("1", "1.2.3", T0)])  # unchanged when unbound


def test_device_not_bound_is_a_reason_of_its_own() -> None:
    code = ReasonCode.DEVICE_NOT_BOUND
    assert (code.value, code.http_status, code.fhir_issue) == ("device_not_bound", 403, "forbidden")


class FakeWriter:
    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def write_all(self, messages: list[Any]) -> None:
        self.written.extend(messages)


class FakeDeadLetters:
    def __init__(self, stores: bool = True) -> None:
        self.letters: list[dict[str, Any]] = []
        self.stores = stores

    async def write(self, **fields: Any) -> bool:
        self.letters.append(fields)
        return self.stores


TOKEN_A, TOKEN_B = "gateway-a-token-not-a-secret", "gateway-b-token-not-a-secret"


async def post_bp(
    registry: DeviceRegistry, token: str, dead: FakeDeadLetters, **settings: Any
) -> tuple[int, Any, FakeWriter]:
    tokens = [
        DeviceToken(sha256=token_hash(TOKEN_A), sender="GW-A"),
        DeviceToken(sha256=token_hash(TOKEN_B), sender="GW-B"),
    ]
    writer = FakeWriter()
    door = DeviceHttpServer(
        DeviceSettings(tokens=tokens, **settings),
        load_templates(),
        writer,
        DeviceMetrics(CollectorRegistry()),
        registry,
        dead,  # type: ignore[arg-type]
    )
    async with TestClient(TestServer(door.app())) as client:
        response = await client.post(
            "/devices/bp-single", data=sample("bp-single"), headers={"Authorization": f"Bearer {token}"}
        )
        return response.status, await response.json(), writer


async def test_http_reading_of_another_gateways_device_is_403_and_a_dead_letter() -> None:
    registry = registry_of({"BPM-00A1B2C3": Link("1", "1.2.3", T0, gateway="GW-A")})
    dead = FakeDeadLetters()
    status, body, writer = await post_bp(registry, TOKEN_B, dead)
    assert status == 403 and writer.written == []
    assert body == {"error": "device_not_bound", "reason": ReasonCode.DEVICE_NOT_BOUND.text, "location": "$"}
    (letter,) = dead.letters
    assert letter["reason_code"] == ReasonCode.DEVICE_NOT_BOUND and letter["stage"] == "ingest"
    assert letter["source_facility"] == "GW-B" and letter["payload"] == sample("bp-single")
    assert "BPM-00A1B2C3" not in json.dumps(body)  # the answer names a position, never a value
    status, body, writer = await post_bp(registry, TOKEN_A, FakeDeadLetters())
    assert status == 202 and len(writer.written) == 1


async def test_http_unbound_device_passes_unless_binding_is_required() -> None:
    registry = registry_of({"BPM-00A1B2C3": Link("1", "1.2.3", T0)})
    assert (await post_bp(registry, TOKEN_B, FakeDeadLetters()))[0] == 202
    status, body, _ = await post_bp(registry, TOKEN_B, FakeDeadLetters(), require_gateway_binding=True)
    assert (status, body["error"]) == (403, "device_not_bound")


async def test_http_refusal_not_stored_is_a_503() -> None:
    registry = registry_of({"BPM-00A1B2C3": Link("1", "1.2.3", T0, gateway="GW-A")})
    status, body, _ = await post_bp(registry, TOKEN_B, FakeDeadLetters(stores=False))
    assert (status, body["error"]) == (503, "unavailable")


async def test_mqtt_reading_of_another_gateways_device_is_a_dead_letter() -> None:
    topics = {"tele/+/gateway-batch": "gateway-batch"}
    registry = registry_of({"0012A3FFFE4B5C6E": Link("1", "1.2.3", T0, gateway="GW-A")})
    writer, dead = FakeWriter(), FakeDeadLetters()
    door = DeviceMqttDoor(
        DeviceMqttSettings(enabled=True, topics=topics),
        load_templates(),
        writer,  # type: ignore[arg-type]
        dead,  # type: ignore[arg-type]
        DeviceMetrics(CollectorRegistry()),
        registry,
    )
    payload = sample("gateway-batch")
    await door._store(
        [
            Received(1, 1, "tele/GW-B/gateway-batch", payload, 0.0),
            Received(2, 1, "tele/GW-A/gateway-batch", payload, 0.0),
        ]
    )
    (letter,) = dead.letters
    assert (letter["reason_code"], letter["rule"], letter["location"]) == (
        ReasonCode.DEVICE_NOT_BOUND,
        "device registry",
        "$.measurements[2]",
    )
    assert letter["source_facility"] == "tele/GW-B/gateway-batch"
    assert [m.facility for m in writer.written] == ["tele/GW-A/gateway-batch"]


# --- 5. keys and certificates ---------------------------------------------------------------------------


def key_file(tmp_path: Path, mode: int, name: str = "k.pem") -> Path:
    path = tmp_path / name
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o700 | 0o004])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ConfigError) as refused:
        check_key_file(key_file(tmp_path, mode), "AFFLUENT_MLLP__TLS_KEY")
    text = str(refused.value)
    assert text.startswith("AFFLUENT_MLLP__TLS_KEY ") and f"{mode:04o}" in text
    assert "PRIVATE" not in text and "not a real key" not in text and "\n" not in text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    check_key_file(key_file(tmp_path, mode), "AFFLUENT_MLLP__TLS_KEY")


def test_a_root_owned_key_its_group_may_read_is_accepted_for_a_non_root_process(
    tmp_path: Path, monkeypatch
) -> None:
    """Kubernetes' Secret volumes with fsGroup (0400 becomes 0440, root:<fsGroup>), PostgreSQL's rule."""
    path = key_file(tmp_path, 0o440)
    if os.stat(path).st_uid != 0:
        pytest.skip("needs a root-owned file")
    with pytest.raises(ConfigError):  # a root process has no reason to share its key with a group
        check_key_file(path, "S")
    monkeypatch.setattr(os, "geteuid", lambda: 10001)
    check_key_file(path, "S")
    path.chmod(0o460)  # group-writable: never
    with pytest.raises(ConfigError):
        check_key_file(path, "S")
    if hasattr(os, "chown"):
        path.chmod(0o440)
        os.chown(path, 12345, -1)  # owned by someone else than root: owner only
        with pytest.raises(ConfigError):
            check_key_file(path, "S")


def test_a_missing_key_file_is_named_not_quoted(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^AFFLUENT_X__TLS_KEY: the key file cannot be read \(FileNotFoundError\)$"
    ):
        check_key_file(tmp_path / "nope.pem", "AFFLUENT_X__TLS_KEY")


def test_every_door_refuses_a_readable_tls_key(pki: TestPki) -> None:
    server = pki.issue("door.test", server=True)
    server.key.chmod(0o644)
    tls = {"host": BEYOND, "tls_certificate": server.cert, "tls_key": server.key}
    for check, model, setting in (
        (mllp_check, MllpSettings, "AFFLUENT_MLLP__TLS_KEY"),
        (fhir_check, FhirRestSettings, "AFFLUENT_FHIR_REST__TLS_KEY"),
        (devices_check, DeviceSettings, "AFFLUENT_DEVICES__TLS_KEY"),
        (opposition_check, OppositionSettings, "AFFLUENT_OPPOSITION__TLS_KEY"),
    ):
        with pytest.raises(ConfigError, match=setting):
            check(model(**tls))
    with pytest.raises(ConfigError, match="AFFLUENT_MLLP__TLS_KEY"):
        tls_context(MllpSettings(**tls))
    client = pki.issue("door-client.test")
    client.key.chmod(0o644)
    settings = mqtt(tls_ca=pki.ca.cert, tls_certificate=client.cert, tls_key=client.key)
    with pytest.raises(ConfigError, match="AFFLUENT_DEVICES__MQTT__TLS_KEY"):
        devices_check(settings)


def test_server_context_is_tls_1_2_at_least_and_verifies_clients(pki: TestPki) -> None:
    import ssl

    server = pki.issue("door.test", server=True)
    context = server_context(
        server.cert, server.key, key_setting="S", client_ca=pki.ca.cert, require_client_certificate=True
    )
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_REQUIRED
    optional = server_context(server.cert, server.key, key_setting="S", client_ca=pki.ca.cert)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ConfigError, match=r"^S: the certificate, key or client CA cannot be loaded"):
        server_context(pki.ca.cert, server.key, key_setting="S")  # a key that is not the certificate's


def test_the_pseudonymization_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    readable = tmp_path / "keys.json"
    readable.write_bytes(KEY_FIXTURE.read_bytes())
    readable.chmod(0o644)
    with pytest.raises(ConfigError) as refused:
        load_keys({"AFFLUENT_PSEUDO_KEY_FILE": str(readable)})
    assert str(refused.value).startswith("AFFLUENT_PSEUDO_KEY_FILE ")
    assert "secret" not in str(refused.value)
    readable.chmod(0o600)
    assert load_keys({"AFFLUENT_PSEUDO_KEY_FILE": str(readable)}).current("hdh").key_id


def test_keys_reach_only_the_children_that_use_them() -> None:
    environ = {
        "AFFLUENT_PSEUDO_KEY_FILE": "/etc/affluent/keys.json",
        "AFFLUENT_PSEUDO_KEY__HDH": "k1:c2VjcmV0",
        "AFFLUENT_MLLP__PORT": "2575",
        "PATH": "/usr/bin",
    }
    by_name = {c.name: c for c in COMPONENTS}
    for name in ("mllp", "normalize", "fhir", "devices"):
        env = child_environment(by_name[name], environ)
        assert not any(k.startswith("AFFLUENT_PSEUDO_KEY") for k in env), name
        assert env["AFFLUENT_MLLP__PORT"] == "2575" and env["PYTHONUNBUFFERED"] == "1"
    for name in ("pseudonymize", "opposition"):
        assert (
            child_environment(by_name[name], environ)["AFFLUENT_PSEUDO_KEY_FILE"] == "/etc/affluent/keys.json"
        )


def test_run_refuses_keys_given_both_by_file_and_by_variables(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_bytes(KEY_FIXTURE.read_bytes())
    keys.chmod(0o600)
    settings = Settings()
    both = {"AFFLUENT_PSEUDO_KEY_FILE": str(keys), "AFFLUENT_PSEUDO_KEY__HDH": "k1:c2VjcmV0"}
    with pytest.raises(ConfigError, match="AFFLUENT_PSEUDO_KEY__HDH") as refused:
        preflight(settings, select(["pseudonymize"]), both)
    assert "c2VjcmV0" not in str(refused.value)
    preflight(settings, select(["mllp"]), both)  # no child of this run takes keys
    preflight(settings, select(["pseudonymize"]), {"AFFLUENT_PSEUDO_KEY_FILE": str(keys)})
    keys.chmod(0o644)
    with pytest.raises(ConfigError, match=r"^AFFLUENT_PSEUDO_KEY_FILE "):
        preflight(settings, select(["pseudonymize"]), {"AFFLUENT_PSEUDO_KEY_FILE": str(keys)})


def test_cli_run_refuses_a_readable_key_file_in_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_bytes(KEY_FIXTURE.read_bytes())
    keys.chmod(0o644)
    result = run_cli(
        "run",
        "--only",
        "pseudonymize",
        env={"AFFLUENT_PSEUDO_KEY_FILE": str(keys), "AFFLUENT_RUN__LOG_DIR": str(tmp_path / "run")},
    )
    assert_one_line_refusal(result, "AFFLUENT_PSEUDO_KEY_FILE", "0644")


# one reading of a certificate's common name, in every door

ONE = {"subject": ((("countryName", "FR"),), (("commonName", "lis.chu-a.test"),))}
TWO = {
    "subject": (
        (("commonName", "lis.chu-a.test"),),
        (("organizationName", "X"),),
        (("commonName", "pas.chu-b.test"),),
    )
}
TWO_IN_ONE_RDN = {"subject": ((("commonName", "a"), ("commonName", "b")),)}
NONE = {"subject": ((("organizationName", "X"),),)}


@pytest.mark.parametrize(
    ("cert", "cn"),
    [(ONE, "lis.chu-a.test"), (TWO, None), (TWO_IN_ONE_RDN, None), (NONE, None), ({}, None), (None, None)],
)
def test_a_certificate_names_its_holder_by_exactly_one_cn(cert: Any, cn: str | None) -> None:
    assert subject_cn(cert) == cn


class FakeTransport:
    def __init__(self, cert: Any) -> None:
        self.cert = cert

    def get_extra_info(self, name: str) -> Any:
        return {"peercert": self.cert, "peername": ("10.0.0.7", 40000)}.get(name)


def test_mllp_and_fhir_read_the_cn_the_same_way() -> None:
    """MLLP took the last CN and FHIR the first: the same two-CN certificate was two senders."""
    for cert, cn in ((ONE, "lis.chu-a.test"), (TWO, None)):
        assert _peer(FakeTransport(cert)).certificate_subject == cn  # type: ignore[arg-type]

        class Request:
            transport = FakeTransport(cert)

        assert tls_subject(Request()) == cn  # type: ignore[arg-type]


def test_components_check_every_door() -> None:
    assert {c.name for c in COMPONENTS if c.check is not None} == {
        c.name for c in COMPONENTS if c.role == "door"
    }
    assert {c.name for c in COMPONENTS if c.needs_keys} == {"pseudonymize", "opposition"}
