"""The audit trail's entries (schemas/audit.py): ids only, closed vocabularies, and the opposition
service records its entry before it changes the registry."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from affluent.cli import build_parser
from affluent.core.errors import KafkaUnavailable
from affluent.core.producer import Delivery
from affluent.core.settings import KafkaSettings, Settings
from affluent.core.topics import CONTROL_AUDIT, CONTROL_OPPOSITION, audit_topic
from schemas.audit import (
    AuditAction,
    AuditChannel,
    AuditOutcome,
    AuditReason,
    InvalidAuditEntry,
    audit_entry,
    entry_json,
    is_identified,
    selected,
    settings_digest,
)
from schemas.catalog import entry_for, schema_text
from streams.opposition.objection import Objection, registry_entries
from streams.opposition.service import OppositionMetrics, OppositionService
from streams.pseudonymize.worker import build_feeds
from tests.support import canonical_samples as cs

AUTHORITY = cs.IPP_AUTHORITY_OID
SCHEMA = fastavro.parse_schema(json.loads(schema_text(entry_for(CONTROL_AUDIT))))


def _encoded(entry: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, entry)
    return buffer.getvalue()


def test_an_objection_enters_the_trail_as_keyed_hashes_only() -> None:
    keys = cs.load_test_keys()
    objection = Objection(ins=cs.NIR_QUALIFIED, ipp=cs.IPP, authority=AUTHORITY)
    entry = audit_entry(
        AuditAction.OPPOSITION_ADD, "dpo", AuditChannel.HTTP, registry_entries(keys, objection)
    )
    data = _encoded(entry)
    shown = json.dumps(entry_json(entry))
    for identity in (cs.NIR_QUALIFIED, cs.NIR_QUALIFIED[:13], cs.IPP, AUTHORITY):
        assert identity.encode() not in data and identity not in shown
    assert entry["targets"] == registry_entries(keys, objection)
    back = fastavro.schemaless_reader(io.BytesIO(data), SCHEMA)
    assert back["action"] == "opposition_add" and back["outcome"] == "ok" and back["reason"] is None


@pytest.mark.parametrize(
    "target",
    [cs.NIR_QUALIFIED, cs.IPP, f"{cs.IPP}@{AUTHORITY}", f"k1:{cs.NIR_QUALIFIED}", "k1:" + "A" * 52],
)
def test_an_identity_in_clear_is_refused_as_an_opposition_target(target: str) -> None:
    with pytest.raises(InvalidAuditEntry) as refused:
        audit_entry(AuditAction.OPPOSITION_REMOVE, "dpo", AuditChannel.CLI, [target])
    assert target not in str(refused.value)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("who", {"who": f"user{cs.NIR_QUALIFIED}"}),
        ("target", {"targets": [f"canonical.{cs.NIR_QUALIFIED}"]}),
        ("attribute", {"attributes": {"host": cs.NIR_QUALIFIED}}),
        ("attribute", {"attributes": {"ins": "x"}}),
        ("settings_sha256", {"attributes": {"settings_sha256": "not-a-hash"}}),
    ],
)
def test_nothing_nir_shaped_or_free_enters_a_topic_read_entry(field: str, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"who": "alice", "targets": ["canonical.patient"], **kwargs}
    with pytest.raises(InvalidAuditEntry) as refused:
        audit_entry(AuditAction.TOPIC_READ, channel=AuditChannel.CLI, **args)
    assert cs.NIR_QUALIFIED not in str(refused.value)


def test_outcome_and_reason_go_together() -> None:
    with pytest.raises(InvalidAuditEntry):
        audit_entry(
            AuditAction.TOPIC_READ, "alice", AuditChannel.CLI, ["canonical.patient"], AuditOutcome.REFUSED
        )
    with pytest.raises(InvalidAuditEntry):
        audit_entry(AuditAction.TOPIC_READ, "alice", AuditChannel.CLI, ["x"], reason=AuditReason.UNAUTHORIZED)
    with pytest.raises(InvalidAuditEntry):  # an ok action says what it acted on
        audit_entry(AuditAction.TOPIC_READ, "alice", AuditChannel.CLI, [])
    refused = audit_entry(
        AuditAction.OPPOSITION_ADD, "-", AuditChannel.HTTP, [], AuditOutcome.REFUSED, AuditReason.UNAUTHORIZED
    )
    assert _encoded(refused) and refused["reason"] == "unauthorized"
    with pytest.raises(ValueError):
        audit_entry("made_up", "alice", AuditChannel.CLI, ["x"])  # type: ignore[arg-type]


def test_the_settings_digest_follows_secrets_without_showing_them() -> None:
    base = Settings(kafka=KafkaSettings(sasl_password=SecretStr("hunter2-secret")))
    same = Settings(kafka=KafkaSettings(sasl_password=SecretStr("hunter2-secret")))
    other = Settings(kafka=KafkaSettings(sasl_password=SecretStr("another-secret")))
    digest = settings_digest(base)
    assert digest == settings_digest(same) != settings_digest(other)
    assert len(digest) == 64 and "hunter2" not in digest
    assert settings_digest(Settings(kafka=KafkaSettings(linger_ms=5))) != settings_digest(Settings())
    entry = audit_entry(
        AuditAction.CONFIG_LOADED,
        "alice",
        AuditChannel.PROCESS,
        ["mllp"],
        attributes={"settings_sha256": digest, "components": "mllp", "pid": "4242"},
    )
    assert b"hunter2" not in _encoded(entry)


def test_which_topics_are_identified() -> None:
    for topic in ("ingest.hl7v2.raw", "canonical.patient", "dlq.normalize", "control.devices", "whatever"):
        assert is_identified(topic), topic
    for topic in ("national.hdh.observation.v1", CONTROL_AUDIT):
        assert not is_identified(topic), topic


def test_selection_by_time_and_action() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    entry = audit_entry(AuditAction.TOPIC_READ, "alice", AuditChannel.CLI, ["canonical.patient"], at=t0)
    assert selected(entry, since=t0, until=t0 + timedelta(seconds=1), action=AuditAction.TOPIC_READ)
    assert not selected(entry, until=t0)
    assert not selected(entry, since=t0 + timedelta(microseconds=1))
    assert not selected(entry, action=AuditAction.OPPOSITION_ADD)


def test_the_command_line_offers_every_action_and_the_topic_keeps_its_retention() -> None:
    args = build_parser().parse_args(["audit", "list", "--action", "topic_read", "--json"])
    assert args.action == "topic_read" and args.json
    for action in AuditAction:
        build_parser().parse_args(["audit", "list", "--action", action.value])
    spec = audit_topic(Settings().audit.retention_ms)
    assert spec.config == {"cleanup.policy": "delete", "retention.ms": str(400 * 86_400_000)}
    assert spec.partitions == 1


class _Producer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def send_all(self, records: list[tuple[str, bytes | None, bytes | None]]) -> list[Delivery]:
        self.log += [topic for topic, _, _ in records]
        return [Delivery(topic, 0, n) for n, (topic, _, _) in enumerate(records)]


class _Audit:
    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log, self.fail = log, fail
        self.entries: list[dict[str, Any]] = []

    async def record(self, entry: dict[str, Any]) -> Delivery:
        if self.fail:
            raise KafkaUnavailable("Kafka did not accept a record for control.audit")
        self.log.append(CONTROL_AUDIT)
        self.entries.append(entry)
        return Delivery(CONTROL_AUDIT, 0, 0)


def _service(log: list[str], fail: bool = False) -> tuple[OppositionService, _Audit]:
    keys = cs.load_test_keys()
    feeds = build_feeds(keys)
    service = OppositionService(Settings(), keys, feeds, OppositionMetrics(CollectorRegistry()))
    service.headers = {t: b"\0\0\0\0\1" for f in feeds for t in f.topics().values()}
    service.producer = _Producer(log)  # type: ignore[assignment]
    audit = _Audit(log, fail)
    service.audit = audit  # type: ignore[assignment]
    return service, audit


async def test_the_audit_entry_is_confirmed_before_the_registry_changes() -> None:
    log: list[str] = []
    service, audit = _service(log)
    objection = Objection(ins=cs.NIR_QUALIFIED, ipp=cs.IPP, authority=AUTHORITY)
    await service.register(objection, "affluent-cli", AuditChannel.CLI, "alice")
    assert log[0] == CONTROL_AUDIT and CONTROL_OPPOSITION in log[1:]
    (entry,) = audit.entries
    assert (entry["who"], entry["channel"], entry["action"]) == ("alice", "cli", "opposition_add")
    assert entry["targets"] == registry_entries(service.keys, objection)
    log.clear()
    await service.withdraw(objection, "dpo", AuditChannel.HTTP)
    assert log[0] == CONTROL_AUDIT and set(log[1:]) == {CONTROL_OPPOSITION}
    assert audit.entries[-1]["who"] == "dpo" and audit.entries[-1]["action"] == "opposition_remove"


async def test_no_audit_entry_means_no_change() -> None:
    log: list[str] = []
    service, _ = _service(log, fail=True)
    objection = Objection(ipp=cs.IPP, authority=AUTHORITY)
    with pytest.raises(KafkaUnavailable):
        await service.register(objection, "dpo")
    with pytest.raises(KafkaUnavailable):
        await service.withdraw(objection, "dpo")
    assert log == []
    service.audit = None
    with pytest.raises(KafkaUnavailable, match="audit trail"):
        await service.register(objection, "dpo")
    assert log == []
