"""The audit trail's later actions, without Kafka: key rotations, tokens, device links and the key ids of
a pseudonymize start. Each entry holds ids only (never a secret, a token, its hash or the linked patient),
the schema grows BACKWARD-compatibly, and each command writes its entry before it acts — no entry, no
change."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from affluent.audit_cli import record_start, start_key_ids
from affluent.cli import main
from affluent.core.errors import ConfigError, KafkaUnavailable
from affluent.core.settings import Settings
from affluent.core.topics import CONTROL_AUDIT
from affluent.devices_cli import link
from affluent.keys_cli import rotate
from formats.devices.registry import Link
from schemas.audit import (
    ATTRIBUTES,
    AuditAction,
    AuditChannel,
    AuditOutcome,
    AuditReason,
    InvalidAuditEntry,
    audit_entry,
    key_ids,
)
from schemas.catalog import entry_for, schema_text
from streams.pseudonymize.keys import ENV_PREFIX, file_provider
from streams.pseudonymize.worker import KEY_FILE_ENV, current_key_ids
from tests.support import canonical_samples as cs

SCHEMA_JSON = json.loads(schema_text(entry_for(CONTROL_AUDIT)))
SCHEMA = fastavro.parse_schema(copy.deepcopy(SCHEMA_JSON))
TEST_KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "test-keys.json"
# The symbols of the first published version: they stay, in order, at the front.
FIRST_SYMBOLS = ["opposition_add", "opposition_remove", "topic_read", "config_loaded", "redrive", "replay"]


def _encoded(entry: dict[str, Any], schema: Any = SCHEMA) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, entry)
    return buffer.getvalue()


def _action_field(schema: dict[str, Any]) -> dict[str, Any]:
    (field,) = [f for f in schema["fields"] if f["name"] == "action"]
    return field["type"]  # type: ignore[no-any-return]


# --- the schema -----------------------------------------------------------------------------------------


def test_the_schema_lists_every_action_and_only_appends() -> None:
    symbols = _action_field(SCHEMA_JSON)["symbols"]
    assert symbols == [a.value for a in AuditAction]
    assert symbols[: len(FIRST_SYMBOLS)] == FIRST_SYMBOLS


def test_entries_of_the_first_version_are_read_by_this_one() -> None:
    """BACKWARD, as the registry pins it: a reader of this version decodes what the first one wrote."""
    old = copy.deepcopy(SCHEMA_JSON)
    _action_field(old)["symbols"] = FIRST_SYMBOLS
    old_schema = fastavro.parse_schema(old)
    written = audit_entry(AuditAction.REPLAY, "alice", AuditChannel.CLI, ["ingest.hl7v2.raw"])
    back = fastavro.schemaless_reader(io.BytesIO(_encoded(written, old_schema)), old_schema, SCHEMA)
    assert back["action"] == "replay"


# --- what each new entry may hold ----------------------------------------------------------------------


def test_a_key_rotation_holds_the_ring_and_the_new_key_id_never_the_secret() -> None:
    secret = base64.b64encode(b"s" * 32).decode()
    entry = audit_entry(
        AuditAction.KEY_ROTATION, "alice", AuditChannel.CLI, ["hdh"], attributes={"key_id": "hdh-2026-12-01"}
    )
    assert entry["targets"] == ["hdh"] and entry["attributes"] == {"key_id": "hdh-2026-12-01"}
    assert _encoded(entry)
    for attributes in ({"key_id": secret}, {"secret": secret}, {"key_id": f"k{cs.NIR_QUALIFIED}"}):
        with pytest.raises(InvalidAuditEntry) as refused:
            audit_entry(AuditAction.KEY_ROTATION, "alice", AuditChannel.CLI, ["hdh"], attributes=attributes)
        assert secret not in str(refused.value) and cs.NIR_QUALIFIED not in str(refused.value)
    for target in ("HDH", "hdh inca", secret):
        with pytest.raises(InvalidAuditEntry):
            audit_entry(AuditAction.KEY_ROTATION, "alice", AuditChannel.CLI, [target])


def test_a_token_entry_holds_its_name_and_component_never_the_token() -> None:
    entry = audit_entry(
        AuditAction.TOKEN_CREATED, "alice", AuditChannel.CLI, ["GW-0042"], attributes={"component": "devices"}
    )
    assert _encoded(entry) and entry["attributes"] == {"component": "devices"}
    for attributes in ({"token": "x"}, {"sha256": "0" * 64}, {"component": "Devices!"}):
        with pytest.raises(InvalidAuditEntry):
            audit_entry(AuditAction.TOKEN_CREATED, "alice", AuditChannel.CLI, ["GW"], attributes=attributes)
    with pytest.raises(InvalidAuditEntry):  # a NIR typed as the token's name
        audit_entry(AuditAction.TOKEN_CREATED, "alice", AuditChannel.CLI, [cs.NIR_QUALIFIED])


@pytest.mark.parametrize("action", [AuditAction.DEVICE_LINK, AuditAction.DEVICE_UNLINK])
def test_a_device_entry_holds_the_device_never_the_patient(action: AuditAction) -> None:
    entry = audit_entry(action, "alice", AuditChannel.CLI, ["BPM-0042-A"])
    assert _encoded(entry)
    refused = audit_entry(
        action, "alice", AuditChannel.CLI, ["BPM-0042-A"], AuditOutcome.REFUSED, AuditReason.INVALID_REQUEST
    )
    assert _encoded(refused)
    # Hardware ids are long digit runs (an IMEI: 15 digits, an EUI-64: 16 hex digits): recorded as they are.
    for device in ("356938035643809", "0018200000001234", "A1B2C3D4E5F60718"):
        assert audit_entry(action, "alice", AuditChannel.CLI, [device])["targets"] == [device]
    # An INS/NIR is refused wherever it sits, with its key or as its 13 bare digits.
    nirs = (cs.NIR_QUALIFIED, cs.NIR_CORSICA, f"dev-{cs.NIR_QUALIFIED}", cs.NIR_QUALIFIED[:13])
    for target in (*nirs, "dev\nice", "x" * 201, ""):
        with pytest.raises(InvalidAuditEntry) as no:
            audit_entry(action, "alice", AuditChannel.CLI, [target])
        assert cs.NIR_QUALIFIED[:13] not in str(no.value)
    for attributes in ({"ipp": cs.IPP}, {"ins": cs.NIR_QUALIFIED}, {"patient": "x"}, {"authority": "x"}):
        with pytest.raises(InvalidAuditEntry):
            audit_entry(action, "alice", AuditChannel.CLI, ["BPM-1"], attributes=attributes)


def test_the_new_attribute_names_identify_nobody() -> None:
    assert {"key_id", "key_ids", "component"} <= ATTRIBUTES
    assert not ATTRIBUTES & {"ins", "ipp", "nir", "patient", "authority", "secret", "token", "sha256", "name"}


def test_key_ids_of_a_start_leave_out_an_id_the_trail_may_not_hold() -> None:
    value, left_out = key_ids({"inca": "inca-1", "hdh": "hdh-2", "opposition": f"o{cs.NIR_QUALIFIED}"})
    assert (value, left_out) == ("hdh:hdh-2,inca:inca-1", ["opposition"])
    entry = audit_entry(
        AuditAction.CONFIG_LOADED,
        "alice",
        AuditChannel.PROCESS,
        ["pseudonymize"],
        attributes={"key_ids": value},
    )
    assert entry["attributes"]["key_ids"] == value
    assert start_key_ids({}) == {}
    with pytest.raises(InvalidAuditEntry):
        audit_entry(
            AuditAction.CONFIG_LOADED, "a", AuditChannel.PROCESS, ["x"], attributes={"key_ids": "hdh=secret"}
        )


# --- the commands: entry first --------------------------------------------------------------------------


class _Trail:
    """Stands in for schemas.audit_log.record_now: keeps the entries, or fails like an absent Kafka."""

    def __init__(self, fail: bool = False, on_record: Any = None) -> None:
        self.entries: list[dict[str, Any]] = []
        self.fail, self.on_record = fail, on_record

    def __call__(self, settings: Settings, entry: dict[str, Any], wait_s: float = 30.0) -> None:
        if self.fail:
            raise KafkaUnavailable("Kafka did not confirm the audit entry")
        _encoded(entry)  # what would be sent: it fits the schema
        if self.on_record is not None:
            self.on_record(entry)
        self.entries.append(entry)


def _trail(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> _Trail:
    trail = _Trail(**kwargs)
    for module in ("affluent.audit_cli", "affluent.keys_cli", "affluent.devices_cli"):
        monkeypatch.setattr(f"{module}.record_now", trail)
    return trail


@pytest.mark.parametrize(
    ("argv", "name", "component"),
    [
        (["opposition", "token", "dpo-tool"], "dpo-tool", "opposition"),
        (["devices", "token", "--sender", "GW-0042"], "GW-0042", "devices"),
    ],
)
def test_a_token_is_recorded_before_it_is_shown_or_said_not_to_be(
    argv: list[str],
    name: str,
    component: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    printed_before: list[str] = []
    trail = _trail(monkeypatch, on_record=lambda entry: printed_before.append(capsys.readouterr().out))
    assert main(argv) == 0
    assert printed_before == [""]  # nothing shown before the entry was written
    out = capsys.readouterr().out
    token = out.splitlines()[0].rsplit(" ", 1)[1]
    (entry,) = trail.entries
    assert (entry["action"], entry["targets"], entry["attributes"]) == (
        "token_created",
        [name],
        {"component": component},
    )
    assert entry["channel"] == "cli" and entry["outcome"] == "ok"
    data = _encoded(entry)
    for secret in (token, hashlib.sha256(token.encode()).hexdigest()):
        assert secret.encode() not in data
    # Best effort: a token is made while a deployment is set up, maybe before Kafka runs. Without the
    # entry it is still shown, after one warning line.
    _trail(monkeypatch, fail=True)
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert "shown once" in shown.out
    (warning,) = shown.err.splitlines()
    assert warning.startswith("affluent: warning: this token is not in the audit trail (Kafka did not")


def test_a_strict_token_entry_raises_when_it_cannot_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from affluent.audit_cli import record_token

    trail = _trail(monkeypatch)
    assert record_token(Settings(), "ops-1", "console", "--name") is None
    assert [e["targets"] for e in trail.entries] == [["ops-1"]]
    _trail(monkeypatch, fail=True)
    with pytest.raises(KafkaUnavailable):
        record_token(Settings(), "ops-1", "console", "--name")


def test_a_token_name_the_trail_refuses_is_one_line_and_no_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = _trail(monkeypatch)
    assert main(["devices", "token", "--sender", cs.NIR_QUALIFIED]) == 2
    shown = capsys.readouterr()
    assert shown.out == "" and trail.entries == []
    (line,) = shown.err.splitlines()
    assert line.startswith("affluent: error: --sender cannot be recorded") and cs.NIR_QUALIFIED not in line


def test_a_device_named_by_its_patient_is_refused_before_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    trail = _trail(monkeypatch)
    since = datetime(2026, 1, 1, tzinfo=UTC)
    for device in (cs.IPP, f"{cs.IPP}@{cs.IPP_AUTHORITY_OID}"):
        with pytest.raises(ConfigError, match="patient's identifier"):
            link(Settings(), device, Link(cs.IPP, cs.IPP_AUTHORITY_OID, since))
    with pytest.raises(ConfigError, match="cannot be recorded"):  # an INS as the device id: no Kafka asked
        link(Settings(), cs.NIR_QUALIFIED, Link("other", cs.IPP_AUTHORITY_OID, since))
    assert trail.entries == []


# --- keys -----------------------------------------------------------------------------------------------


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(TEST_KEYS.read_text(encoding="utf-8"), encoding="utf-8")
    path.chmod(mode)
    return path


def test_rotate_records_first_then_swaps_in_an_owner_only_file_keeping_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _key_file(tmp_path)
    before = path.read_bytes()
    seen: list[bytes] = []
    trail = _trail(monkeypatch, on_record=lambda entry: seen.append(path.read_bytes()))
    env = {KEY_FILE_ENV: str(path)}
    done = rotate(
        Settings(), "hdh", environ=env, who="alice", clock=lambda: datetime(2026, 12, 1, tzinfo=UTC)
    )
    assert seen == [before]  # the entry was written while the file was still the old one
    (entry,) = trail.entries
    assert (entry["who"], entry["action"], entry["targets"]) == ("alice", "key_rotation", ["hdh"])
    assert entry["attributes"] == {"key_id": "hdh-2026-12-01"} == {"key_id": done.key_id}
    keys = file_provider(path)
    old = file_provider(TEST_KEYS)
    assert [k.key_id for k in keys.all("hdh")] == ["hdh-2026-12-01", *(k.key_id for k in old.all("hdh"))]
    assert keys.all("hdh")[1:] == old.all("hdh")  # the same secrets, kept
    assert len(keys.current("hdh").secret) == 32 and keys.current("hdh") not in old.all("hdh")
    assert keys.all("inca") == old.all("inca") and keys.all("opposition") == old.all("opposition")
    assert "_comment" in json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temporary file left
    secret = base64.b64encode(keys.current("hdh").secret)
    assert secret not in _encoded(entry)
    again = rotate(Settings(), "hdh", environ=env, clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    assert again.key_id == "hdh-2026-12-01.2" and again.kept[0] == "hdh-2026-12-01"


def test_no_entry_no_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _key_file(tmp_path)
    before = path.read_bytes()
    _trail(monkeypatch, fail=True)
    with pytest.raises(KafkaUnavailable):
        rotate(Settings(), "inca", environ={KEY_FILE_ENV: str(path)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({f"{ENV_PREFIX}HDH": "k1:" + "A" * 44}, f"come from {ENV_PREFIX}HDH"),
        ({f"{ENV_PREFIX}INCA": "k1:" + "A" * 44}, "variables, not a file"),
        ({}, f"set {KEY_FILE_ENV}"),
    ],
)
def test_keys_from_the_environment_are_not_rotated_here(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = _trail(monkeypatch)
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX) or n == KEY_FILE_ENV]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["keys", "rotate", "--destination", "hdh"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("affluent: error: ") and says in line and "A" * 44 not in line
    assert trail.entries == []


def test_rotate_refuses_what_the_loader_would_refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trail = _trail(monkeypatch)
    readable = _key_file(tmp_path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        rotate(Settings(), "hdh", environ={KEY_FILE_ENV: str(readable)})
    readable.chmod(0o600)
    with pytest.raises(ConfigError, match="has no ring nope"):
        rotate(Settings(), "nope", environ={KEY_FILE_ENV: str(readable)})
    with pytest.raises(ConfigError, match="already has a key"):
        rotate(Settings(), "hdh", "TEST-ONLY-NOT-A-SECRET-hdh-k1", environ={KEY_FILE_ENV: str(readable)})
    with pytest.raises(ConfigError, match="--key-id"):
        rotate(Settings(), "hdh", "bad id", environ={KEY_FILE_ENV: str(readable)})
    assert trail.entries == [] and readable.read_text() == TEST_KEYS.read_text()


def test_keys_list_shows_ids_and_the_current_one_never_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path)))
    monkeypatch.setenv(f"{ENV_PREFIX}INCA", "env-inca-1:" + base64.b64encode(b"e" * 32).decode())
    assert main(["keys", "list", "--json"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines()]
    hdh = [(r["key_id"], r["state"]) for r in rows if r["ring"] == "hdh"]
    assert hdh == [("TEST-ONLY-NOT-A-SECRET-hdh-k2", "current"), ("TEST-ONLY-NOT-A-SECRET-hdh-k1", "kept")]
    (inca,) = [r for r in rows if r["ring"] == "inca"]
    assert inca["key_id"] == "env-inca-1" and inca["origin"] == f"environment variable {ENV_PREFIX}INCA"
    for entries in json.loads(TEST_KEYS.read_text()).values():
        for key in entries if isinstance(entries, list) else []:
            assert key["secret"] not in out
    assert base64.b64encode(b"e" * 32).decode() not in out


# --- the pseudonymize worker's start names its key ids -------------------------------------------------


def test_a_pseudonymize_start_records_its_current_key_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.canonical_samples import load_test_keys

    trail = _trail(monkeypatch)
    current = current_key_ids(load_test_keys())
    assert current == {
        "hdh": "TEST-ONLY-NOT-A-SECRET-hdh-k2",
        "inca": "TEST-ONLY-NOT-A-SECRET-inca-k1",
        "opposition": "TEST-ONLY-NOT-A-SECRET-opp-k1",
    }
    record_start(Settings(), "pseudonymize", ["pseudonymize"], start_key_ids(current))
    (entry,) = trail.entries
    assert entry["attributes"]["key_ids"] == ",".join(f"{r}:{k}" for r, k in sorted(current.items()))


def test_the_pseudonymize_command_hands_its_audited_keys_to_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trail = _trail(monkeypatch)
    started: list[Any] = []
    monkeypatch.setattr("streams.pseudonymize.worker.run", lambda settings, keys: started.append(keys))
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_FILE_ENV, str(_key_file(tmp_path)))
    monkeypatch.setenv("AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT", "0")  # no port check
    assert main(["pseudonymize"]) == 0
    (keys,) = started
    (entry,) = trail.entries
    assert entry["action"] == "config_loaded" and entry["targets"] == ["pseudonymize"]
    assert f"hdh:{keys.current('hdh').key_id}" in entry["attributes"]["key_ids"]
