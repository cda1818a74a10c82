"""One settings object for every process.

Values come, strongest first, from keyword arguments, ``AFFLUENT_*`` environment variables (nested with
``__``, e.g. ``AFFLUENT_KAFKA__BOOTSTRAP_SERVERS``), a ``.env`` file, and a YAML file named by
``AFFLUENT_CONFIG``. Defaults point at the local stack (``make up``) so that a fresh clone works
without any configuration, while a production deployment only sets variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from affluent.core.auth import JWT_ALGORITHMS
from affluent.core.errors import ConfigError
from affluent.core.origins import transport_allowed

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class KafkaSettings(BaseModel):
    """How to reach Kafka and how durable writes must be."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "affluent"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    # A sender waits for our answer: past this many ms without a delivery report we NAK rather than hang.
    delivery_timeout_ms: int = Field(default=15_000, ge=1_000)
    # Doors wait for each delivery report before answering a sender, so batching delay is paid per
    # message: keep it near zero (under load, records still batch while a request is in flight).
    linger_ms: float = Field(default=0.0, ge=0)
    default_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL") and self.sasl_mechanism != "OAUTHBEARER"
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password"
            )
        if self.min_insync_replicas and self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas cannot exceed replication_factor")
        return self


class RegistrySettings(BaseModel):
    """The Confluent-API schema registry (Apicurio's ccompat endpoint in the local stack)."""

    url: str = "http://127.0.0.1:8081/apis/ccompat/v7"
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError("not an http(s) URL, e.g. http://127.0.0.1:8081/apis/ccompat/v7")
        return url


class ConnectionLimits(BaseModel):
    """What one HTTP door gives a peer before refusing it: a hostile or broken client must not hold
    every socket, nor a handler, by connecting and sending nothing (or one byte a minute)."""

    # Open connections at most; one more is answered 503 and closed at once (and counted).
    max_connections: int = Field(default=256, ge=1)
    # Seconds from the connection (TLS handshake done) to the end of the first request's headers;
    # also the TLS handshake's own bound.
    header_timeout_s: float = Field(default=15.0, gt=0)
    # Seconds a keep-alive connection may wait for its next request.
    idle_timeout_s: float = Field(default=75.0, gt=0)
    max_line_size: int = Field(default=8190, ge=1024)
    max_field_size: int = Field(default=8190, ge=1024)
    max_headers: int = Field(default=100, ge=10)


class MllpSettings(BaseModel):
    """The HL7 v2 MLLP door."""

    host: str = "127.0.0.1"
    port: int = Field(default=2575, ge=0, le=65535)
    max_frame_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # MSH-9.1 values we store; anything else is refused with AR so the sender knows at once. By default
    # every type of formats/hl7/coverage.py MAPPED (a unit test holds the two equal); a subset restricts.
    allowed_message_types: list[str] = ["ADT", "BAR", "ORU"]
    # Identity the hub uses in ACKs when the message did not name a receiver (MSH-5/MSH-6).
    receiving_application: str = "AFFLUENT"
    receiving_facility: str = "AFFLUENT"
    # Charset assumed when MSH-18 is absent and the bytes are not valid UTF-8 (French systems: latin-1).
    default_charset: str = "latin-1"
    # Seconds a connection may stay silent before we close it (interface engines reconnect).
    idle_timeout_s: float = Field(default=600.0, gt=0)
    # Open connections at most; one more is closed at once (and counted), before any byte is read.
    max_connections: int = Field(default=256, ge=1)
    # Seconds to the first byte of a new connection (and the TLS handshake's bound): a silent peer
    # must not hold one of max_connections for idle_timeout_s.
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_require_client_certificate: bool = False
    # Sending facility (MSH-4.1) -> certificate subjects (CN) allowed to send as that facility.
    tls_allowed_subjects: dict[str, list[str]] = {}
    # Beyond loopback the door needs TLS, required client certificates and the allow-list above (MLLP has
    # no authentication of its own); true starts it without them, with a warning (docs/security.md).
    allow_plaintext: bool = False
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)

    @model_validator(mode="after")
    def _tls_pairs(self) -> MllpSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if self.tls_require_client_certificate and self.tls_client_ca is None:
            raise ValueError("tls_require_client_certificate needs tls_client_ca")
        if self.tls_allowed_subjects and self.tls_client_ca is None:
            raise ValueError("tls_allowed_subjects needs client certificates (tls_client_ca)")
        return self


class FhirNotifierSettings(BaseModel):
    """A FHIR server whose Subscription notifications this door accepts, for fetching id-only payloads."""

    base_url: str  # only references under this base are fetched (never an arbitrary URL from a payload)
    bearer_token: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    # id-only references fetched for one notification at most (more → 413), and the bytes of one
    # fetched resource (None: the door's max_body_bytes).
    max_references: int = Field(default=100, ge=1)
    max_fetch_bytes: int | None = Field(default=None, ge=1024)


class FhirRestSettings(BaseModel):
    """The FHIR REST door (env ``AFFLUENT_FHIR_REST__*``). Senders are ``"<facility>|<application>"``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    base_path: str = "/fhir"
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    retry_after_s: int = Field(default=5, ge=1)
    # Processes that validate Bundles off the event loop (a 100-entry Bundle is ~20-30 ms of CPU, a
    # 13.5 MiB one ~6 s, which would stall every other request); 0 validates them in the door's own loop.
    validation_processes: int = Field(default=1, ge=0)
    # Entries of one Bundle (posted, or a notification) at most; more → 413 too-costly, unvalidated.
    max_bundle_entries: int = Field(default=1000, ge=1)
    limits: ConnectionLimits = ConnectionLimits()
    # Static bearer tokens, by SHA-256 (hex) of the token -> the one sender it may write as.
    token_sha256: dict[str, str] = {}
    # JWT bearer tokens: signature by the issuer's JWKS (a file or a URL); the ``sub`` claim names the
    # client, and this map binds each client to one sender.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_file: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: list[str] = ["RS256", "ES256"]
    jwt_subjects: dict[str, str] = {}
    # mTLS: client certificate subject CN -> sender.
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_subjects: dict[str, str] = {}
    # Beyond loopback the door needs TLS; true starts it in clear text, with a warning.
    allow_plaintext: bool = False
    # Sender -> the FHIR server that notifies for it (id-only fetches).
    notifiers: dict[str, FhirNotifierSettings] = {}
    metrics_port: int | None = Field(default=9467, ge=0, le=65535)

    @model_validator(mode="after")
    def _jwt_checks(self) -> FhirRestSettings:
        odd = [a for a in self.jwt_algorithms if a not in JWT_ALGORITHMS]
        if odd or not self.jwt_algorithms:
            raise ValueError(
                f"jwt_algorithms: {', '.join(odd) or 'none'} not allowed; "
                f"only asymmetric ones: {', '.join(sorted(JWT_ALGORITHMS))}"
            )
        if (self.jwt_jwks_file or self.jwt_jwks_url) and not self.jwt_audience:
            raise ValueError("JWT needs jwt_audience: a token issued for another service must not pass")
        if self.jwt_jwks_url and not transport_allowed(self.jwt_jwks_url):
            raise ValueError("jwt_jwks_url must be an https URL (plain http only to a loopback host)")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> FhirRestSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if self.tls_subjects and self.tls_client_ca is None:
            raise ValueError("tls_subjects needs client certificates (tls_client_ca)")
        if self.jwt_subjects and not (self.jwt_issuer and (self.jwt_jwks_file or self.jwt_jwks_url)):
            raise ValueError("jwt_subjects needs jwt_issuer and jwt_jwks_file or jwt_jwks_url")
        senders = [*self.token_sha256.values(), *self.jwt_subjects.values(), *self.tls_subjects.values()]
        senders += list(self.notifiers)
        if any(s.count("|") != 1 or "" in s.split("|") for s in senders):
            raise ValueError("a sender is written '<facility>|<application>'")
        if not self.base_path.startswith("/") or self.base_path.endswith("/"):
            raise ValueError("base_path starts with '/' and does not end with one")
        return self


class StreamsSettings(BaseModel):
    """The stream workers (normalize, pseudonymize): the stage shell of streams/app.py."""

    # Consumer groups: every worker of one stage shares its group, so partitions spread over workers.
    normalize_group: str = "affluent-normalize"
    # Hospitals' local time zone, for times sent without an offset.
    timezone: str = "Europe/Paris"
    # Records per batch at most: outputs of a batch are confirmed by Kafka before its inputs are committed.
    # A batch is what the consumer has already fetched (it grows with the load); when nothing is there,
    # the worker waits up to batch_window_s for the first record (also how often it checks for a stop).
    batch_size: int = Field(default=500, ge=1)
    batch_window_s: float = Field(default=0.05, gt=0)
    # A worker that stops heartbeating (killed) loses its partitions to the others after this long.
    session_timeout_ms: int = Field(default=45_000, ge=6_000, le=300_000)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9465, ge=0, le=65535)
    # The pseudonymize worker's own group and /metrics port (the normalize worker's are the two above).
    pseudonymize_group: str = "affluent-pseudonymize"
    pseudonymize_metrics_port: int | None = Field(default=9466, ge=0, le=65535)
    # The cohort stage (Faust): its application id names its consumer group and its tables' changelog
    # topics; its tables live in RocksDB under cohort_state_dir (rebuilt from the changelogs if lost).
    cohort_group: str = "affluent-cohort"
    cohort_state_dir: Path = REPO_ROOT / ".state" / "cohort"
    cohort_metrics_port: int | None = Field(default=9470, ge=0, le=65535)
    # Folder of cohort definitions (*.yaml); None = the cohorts shipped in streams/cohort/cohorts.
    cohorts_dir: Path | None = None
    # Bounds of the events held per patient until a cohort includes them (oldest dropped, counted).
    cohort_max_held_events: int = Field(default=10_000, ge=1)
    cohort_max_held_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Standby replicas of the tables on other workers (a moved partition resumes without a full replay).
    cohort_standby_replicas: int = Field(default=0, ge=0, le=3)


class FhirPollSettings(BaseModel):
    """The FHIR puller (``affluent pull``): where its sources are listed and how patient it is."""

    # The sources file (YAML, see README "being pulled"); ``affluent pull --sources`` overrides it.
    sources: Path | None = None
    raw_topic: str = "ingest.fhir.raw"
    dlq_topic: str = "dlq.ingest"
    checkpoint_topic: str = "control.fhir_poll.checkpoints"
    # Seconds between passes in ``--follow`` mode (a source may set its own ``interval_s``).
    interval_s: float = Field(default=60.0, gt=0)
    http_timeout_s: float = Field(default=30.0, gt=0)
    # Retries of one request (429, 5xx, transport errors) before the pass gives up with an error.
    max_attempts: int = Field(default=6, ge=1)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # Bulk $export: status polling interval when the server sends no Retry-After, and the overall bound.
    bulk_poll_s: float = Field(default=5.0, gt=0)
    bulk_timeout_s: float = Field(default=3600.0, gt=0)
    # Plain http:// sources (tokens and patient data in clear) for every source; a source may say it
    # alone (``allow_plaintext: true`` in the sources file). Loopback hosts never need it.
    allow_plaintext: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9469, ge=0, le=65535)


class DeviceToken(BaseModel):
    """A bearer token of one device or gateway, stored only as its SHA-256 (hex), never in clear."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Gateway or device id: the raw record's source facility (one Kafka key, so one sender's order).
    sender: str = Field(min_length=1)
    # Mapping templates this token may post to; empty = any.
    mappings: list[str] = []


class DeviceMqttSettings(BaseModel):
    """The MQTT door: subscriptions on a broker (QoS 1), PUBACK only after Kafka holds the reading."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    # A fixed client id with a persistent session: the broker keeps unacknowledged readings for us.
    client_id: str = "affluent-devices"
    # Topic filter -> mapping template name, e.g. {"telemonitoring/+/bp": "bp-single"}.
    topics: dict[str, str] = {}
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    # A broker beyond loopback needs username/password (always) and TLS (tls_ca or a client certificate);
    # true accepts a clear-text connection to it, with a warning. ACLs per gateway: docs/security.md.
    allow_plaintext: bool = False
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _pairs(self) -> DeviceMqttSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.enabled and not self.topics:
            raise ValueError("the MQTT door needs at least one topic (topic filter -> template)")
        return self


class DeviceSettings(BaseModel):
    """The telemonitoring door (HTTPS JSON + MQTT) and the device mapping in the normalize stage."""

    host: str = "127.0.0.1"
    port: int = Field(default=8082, ge=0, le=65535)
    metrics_port: int | None = Field(default=9468, ge=0, le=65535)
    # Folder of mapping templates (*.yaml); None = the templates shipped in connectors/devices/mappings.
    templates_dir: Path | None = None
    tokens: list[DeviceToken] = []
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    retry_after_s: int = Field(default=5, ge=1)
    # Readings later than their arrival by more than this are flagged (interpretation future-time).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    # Mutual TLS: when set, a client certificate signed by this CA is required (bearer tokens still are).
    tls_client_ca: Path | None = None
    # Beyond loopback the HTTP door needs TLS; true starts it in clear text, with a warning.
    allow_plaintext: bool = False
    # A device linked to a gateway (``affluent devices link --gateway``) is always refused from any other
    # sender; true also refuses readings of devices linked without a gateway, or not linked at all.
    require_gateway_binding: bool = False
    mqtt: DeviceMqttSettings = DeviceMqttSettings()
    limits: ConnectionLimits = ConnectionLimits()

    @model_validator(mode="after")
    def _tls_pair(self) -> DeviceSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if self.tls_client_ca is not None and self.tls_certificate is None:
            raise ValueError("tls_client_ca needs tls_certificate and tls_key (HTTPS)")
        return self


class RunSettings(BaseModel):
    """``affluent run``: the supervisor of the doors and workers of one box."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9460, ge=0, le=65535)
    # Children's output goes to <log_dir>/<component>.log; default: <state_dir>/run.
    log_dir: Path | None = None
    # On shutdown each child gets SIGTERM, then SIGKILL after this many seconds.
    stop_timeout_s: float = Field(default=30.0, gt=0)
    # A crashed child is restarted after 0.5 s, 1 s, 2 s … up to this many seconds between tries.
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    # A child that stayed up this long is healthy again: its next crash restarts it at once.
    stable_after_s: float = Field(default=30.0, gt=0)


class StackSettings(BaseModel):
    """The embedded local stack: where it keeps jars, data and logs, and where it listens."""

    state_dir: Path = REPO_ROOT / ".state"
    cache_dir: Path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "affluent"
    deploy_dir: Path = REPO_ROOT / "deploy" / "local"
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    registry_port: int = 8081
    registry_management_port: int = 9001
    kafka_version: str = "4.0.2"
    registry_version: str = "3.3.3"
    broker_heap: str = "512m"
    registry_heap: str = "512m"
    java_home: Path | None = None
    # Apicurio 3.3 is built for Java 21+; found automatically under /usr/lib/jvm when not set.
    registry_java_home: Path | None = None
    start_timeout_s: float = Field(default=120.0, gt=0)


class OppositionSettings(BaseModel):
    """The HTTP endpoint where objections are registered and withdrawn (``affluent opposition serve``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # principal (a service account, e.g. the DPO's tool) → hex SHA-256 of its bearer token
    # (``affluent opposition token`` makes one). No token configured → the endpoint refuses to start.
    tokens: dict[str, str] = {}
    # HTTPS; beyond loopback the endpoint needs it (bearer tokens in clear text are anyone's), unless
    # allow_plaintext is true (then with a warning).
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    allow_plaintext: bool = False
    limits: ConnectionLimits = ConnectionLimits(max_connections=64)

    @model_validator(mode="after")
    def _tls_pair(self) -> OppositionSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        return self


class AuditSettings(BaseModel):
    """The audit trail (``control.audit``)."""

    # How long entries are kept; applied as the topic's retention.ms when the topic is created.
    retention_ms: int = Field(default=400 * 86_400_000, ge=86_400_000)


class ConsoleSettings(BaseModel):
    """The operators' web console (``affluent console``): health, dead letters and re-drive, trace."""

    host: str = "127.0.0.1"
    port: int = Field(default=8095, ge=0, le=65535)
    # name (a service account or an operator's login, never a patient's) → hex SHA-256 of its bearer
    # token (``affluent console token --name NAME`` makes one); the name is who the audit trail records.
    token_sha256: dict[str, str] = {}
    # HTTPS; beyond loopback the console needs it (tokens, cookies and patients' payloads in clear text
    # are anyone's on the path), unless allow_plaintext is true (then with a warning).
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    # mTLS: client certificates signed by this CA whose one CN is listed here log in as that CN.
    tls_client_ca: Path | None = None
    tls_client_subjects: list[str] = []
    allow_plaintext: bool = False
    # ``affluent run``'s supervisor /health; None: http://<AFFLUENT_RUN__METRICS_HOST>:<…PORT>/health.
    supervisor_url: str | None = None
    # A browser session (login form) lasts this long at most; then the token is asked again.
    session_lifetime_s: float = Field(default=8 * 3600.0, ge=60, le=7 * 86400)
    # Channel rates are counted between two scrapes of the components' /metrics, this far apart.
    rate_interval_s: float = Field(default=10.0, ge=1)
    # Dead letters listed by default: those of the last this many days (a page may ask for others).
    dlq_days: float = Field(default=7.0, gt=0)
    # Seconds a page waits for Kafka before it says Kafka is down (503).
    kafka_wait_s: float = Field(default=5.0, gt=0)
    limits: ConnectionLimits = ConnectionLimits(max_connections=64)

    @model_validator(mode="after")
    def _consistent(self) -> ConsoleSettings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if self.tls_client_ca is not None and self.tls_certificate is None:
            raise ValueError("tls_client_ca needs tls_certificate and tls_key (HTTPS)")
        if self.tls_client_subjects and self.tls_client_ca is None:
            raise ValueError("tls_client_subjects needs client certificates (tls_client_ca)")
        if self.supervisor_url is not None and urlsplit(self.supervisor_url).scheme not in ("http", "https"):
            raise ValueError("supervisor_url is an http(s) URL, e.g. http://127.0.0.1:9460/health")
        return self


class NetworkSettings(BaseModel):
    """The local three-level network (hospital -> region -> national): independent clusters + MirrorMaker 2.

    Cluster k of the network listens on ``base_port + 10*k`` (Kafka), ``+1`` (KRaft controller), ``+2``
    (registry), ``+3`` (registry management) and ``+4`` (the MirrorMaker metrics of the flows into it), so
    the network never collides with the single-cluster stack (9092/9093/8081/9001).
    """

    state_dir: Path = REPO_ROOT / ".state" / "network"
    deploy_dir: Path = REPO_ROOT / "deploy" / "mirror"
    base_port: int = Field(default=19100, ge=1024, le=65000)
    broker_heap: str = "384m"
    registry_heap: str = "384m"
    mirror_heap: str = "384m"
    jmx_agent_version: str = "1.0.1"


class Settings(BaseSettings):
    """Everything a process needs, validated once at start so mistakes surface before traffic flows."""

    model_config = SettingsConfigDict(
        env_prefix="AFFLUENT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    mllp: MllpSettings = MllpSettings()
    fhir_rest: FhirRestSettings = FhirRestSettings()
    streams: StreamsSettings = StreamsSettings()
    fhir_poll: FhirPollSettings = FhirPollSettings()
    stack: StackSettings = StackSettings()
    opposition: OppositionSettings = OppositionSettings()
    devices: DeviceSettings = DeviceSettings()
    run: RunSettings = RunSettings()
    network: NetworkSettings = NetworkSettings()
    audit: AuditSettings = AuditSettings()
    console: ConsoleSettings = ConsoleSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get("AFFLUENT_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings, turning pydantic's report into one readable ConfigError that names
    each setting as its environment variable and never repeats a value (it may be a secret)."""
    config_file = os.environ.get("AFFLUENT_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"AFFLUENT_CONFIG names {config_file}, which is not a readable file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_invalid(exc)) from None
    except SettingsError as exc:
        raise ConfigError(_not_json(exc)) from None
    except (ValueError, yaml.YAMLError) as exc:
        if not config_file:
            raise
        raise ConfigError(
            f"AFFLUENT_CONFIG names {config_file}, which is not a YAML mapping of settings "
            f"({type(exc).__name__}): see the README, Configuration"
        ) from None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model an annotation holds (itself, optional, or as a list's or a mapping's entries)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _takes_json(annotation: Any) -> bool:
    """Whether an environment variable of this setting must hold JSON (a list, a mapping, a model)."""
    return any(
        get_origin(a) in (list, dict) or (isinstance(a, type) and issubclass(a, BaseModel))
        for a in (annotation, *get_args(annotation))
    )


def setting_name(loc: Sequence[str | int]) -> str:
    """The environment variable a validation error's location names (``AFFLUENT_FHIR_REST__TOKEN_SHA256``).

    Keys of a mapping and indexes of a list are left out (a key may be a token digest or an account name);
    a field of a list's entry is kept, e.g. ``AFFLUENT_DEVICES__TOKENS (an entry's sha256)``.
    """
    parts: list[str] = []
    model: type[BaseModel] | None = Settings
    rest = list(loc)
    entry = ""
    while rest and model is not None:
        name = str(rest.pop(0))
        if name not in model.model_fields:  # a key that is no setting (extra_forbidden): name it
            parts.append(name.upper())
            model = None
            break
        parts.append(name.upper())
        annotation = model.model_fields[name].annotation
        model = _model_of(annotation)
        if model is not None and get_origin(annotation) in (list, dict):
            fields = [str(r) for r in rest[1:] if r in model.model_fields]
            entry = f" (an entry's {fields[0]})" if fields else " (an entry)"
            break
    if not parts:
        return "a setting"
    section = "__*" if model is not None and not rest and not entry else ""
    return "AFFLUENT_" + "__".join(parts) + section + entry


def describe_invalid(exc: ValidationError) -> str:
    """One sentence for every problem of a settings validation: the setting and what is wrong with it.

    Our own validators' sentences are kept (they name settings, never values); pydantic's are kept
    with their error type unless the value shows in them, which is then left out."""
    problems = []
    for err in exc.errors():
        if err["type"] in ("value_error", "assertion_error"):
            text = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            text = f"{err['msg']} ({err['type']})"
            value = err.get("input")
            if isinstance(value, str | int | float) and len(str(value)) > 2 and str(value) in text:
                text = f"invalid value ({err['type']})"
        problems.append(f"{setting_name(err['loc'])}: {text}")
    return "invalid settings: " + "; ".join(problems) + "; fix the variable (or the AFFLUENT_CONFIG file)"


def _not_json(exc: SettingsError) -> str:
    """Which variables hold something other than the JSON their setting takes (pydantic-settings only
    names the section), never what they hold."""
    bad = []
    for name, value in os.environ.items():
        upper = name.upper()
        if not upper.startswith("AFFLUENT_"):
            continue
        model: type[BaseModel] | None = Settings
        annotation: Any = None
        for part in upper.removeprefix("AFFLUENT_").lower().split("__"):
            if model is None or part not in model.model_fields:
                annotation = None
                break
            annotation = model.model_fields[part].annotation
            model = None if get_origin(annotation) in (list, dict) else _model_of(annotation)
        if annotation is None or not _takes_json(annotation):
            continue
        try:
            json.loads(value)
        except ValueError:
            shape = "list, e.g. '[\"…\"]'" if _json_list(annotation) else "object, e.g. '{\"…\": …}'"
            bad.append(f"{upper} must be a JSON {shape}")
    if not bad:
        return f"invalid settings: {exc}: a value that should be JSON is not (the .env file?); fix it"
    return (
        f"invalid settings: {'; '.join(sorted(bad))} (not JSON now); fix the variable, quoted for the shell"
    )


def _json_list(annotation: Any) -> bool:
    return any(get_origin(a) is list for a in (annotation, *get_args(annotation)))
