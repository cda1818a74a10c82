"""The audit trail on the real broker and registry: an objection through the CLI and through the HTTP
endpoint, a ``tail`` of a canonical topic, a key rotation, device links and a token each leave their entry
that ``affluent audit list --json`` shows with who, what and the outcome right — and no identity, secret
or token in clear."""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import json
import os
import stat
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from affluent.cli import main
from affluent.core.auth import StaticTokens, new_token
from affluent.core.kafka import TopicSpec, ensure_topics
from streams.opposition.cli import build_service
from streams.opposition.http import OppositionEndpoint
from streams.opposition.objection import Objection, registry_entries
from streams.pseudonymize.keys import ENV_PREFIX
from streams.pseudonymize.worker import KEY_FILE_ENV, load_keys
from tests.support import canonical_samples as cs
from tests.support.pipeline import KEY_FILE

pytestmark = [pytest.mark.integration]

AUTHORITY = cs.IPP_AUTHORITY_OID


def _audit_list(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["audit", "list", "--json", *args]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_cli_http_and_tail_each_leave_one_entry(settings, live_kafka, registry, monkeypatch, capsys) -> None:
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))
    keys = load_keys()
    run = uuid.uuid4().hex[:8]
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    by_cli = Objection(ipp=f"A{run}1", authority=AUTHORITY)
    by_http = Objection(ipp=f"A{run}2", authority=AUTHORITY)
    principal = f"dpo-{run}"

    # 1. the command line: the OS user
    assert main(["opposition", "add", "--ipp", by_cli.ipp or "", "--authority", AUTHORITY]) == 0

    # 2. the HTTP endpoint: the bearer token's principal
    async def over_http() -> int:
        service = build_service(settings, keys, CollectorRegistry())
        await service.start(with_view=False)
        token, digest = new_token()
        endpoint = OppositionEndpoint(service, StaticTokens({principal: digest}), CollectorRegistry())
        port = await endpoint.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                body = {"ipp": by_http.ipp, "authority": AUTHORITY}
                answer = await client.post(
                    "/opposition", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                refused = await client.post(
                    "/opposition", json=body, headers={"Authorization": "Bearer nope"}
                )
                assert refused.status_code == 401
                return answer.status_code
        finally:
            await endpoint.stop()
            await service.stop()  # waits for the background refusal entry

    assert asyncio.run(over_http()) == 201

    # 3. a read of an identified topic
    ensure_topics(live_kafka, [TopicSpec("canonical.patient")])
    assert main(["tail", "canonical.patient", "--from-beginning", "--max", "1"]) == 0

    entries = _audit_list(capsys, "--since", since)
    user = getpass.getuser()
    cli_targets = registry_entries(keys, by_cli)
    http_targets = registry_entries(keys, by_http)
    cli = [e for e in entries if e["targets"] == cli_targets]
    http = [e for e in entries if e["targets"] == http_targets]
    assert [(e["who"], e["channel"], e["action"], e["outcome"]) for e in cli] == [
        (user, "cli", "opposition_add", "ok")
    ]
    assert [(e["who"], e["channel"], e["action"], e["outcome"]) for e in http] == [
        (principal, "http", "opposition_add", "ok")
    ]
    reads = [e for e in entries if e["action"] == "topic_read" and e["who"] == user]
    assert reads and reads[-1]["targets"] == ["canonical.patient"] and reads[-1]["outcome"] == "ok"
    assert any(
        e["action"] == "opposition_add" and e["outcome"] == "refused" and e["reason"] == "unauthorized"
        for e in entries
    )
    text = json.dumps(entries)
    for identity in (by_cli.ipp, by_http.ipp):
        assert identity is not None and identity not in text

    # --action filters; --until before them all shows none of ours
    only_reads = _audit_list(capsys, "--since", since, "--action", "topic_read")
    assert only_reads and {e["action"] for e in only_reads} == {"topic_read"}
    assert not [e for e in _audit_list(capsys, "--until", since) if e["targets"] == cli_targets]

    # withdrawal through the CLI is recorded too (and cleans up)
    for objection in (by_cli, by_http):
        assert main(["opposition", "remove", "--ipp", objection.ipp or "", "--authority", AUTHORITY]) == 0
    removed = _audit_list(capsys, "--since", since, "--action", "opposition_remove")
    assert {e["who"] for e in removed if set(e["targets"]) >= set(cli_targets)} == {user}


def _clear_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX) or n == KEY_FILE_ENV]:
        monkeypatch.delenv(name)


def test_a_key_rotation_is_in_the_trail_and_the_file_keeps_every_key(
    settings, live_kafka, registry, monkeypatch, capsys, tmp_path
) -> None:
    """``affluent keys rotate`` on the real trail: the entry (who, ring, new key id, no secret), the file
    rotated in place with its old keys and owner-only mode; keys from a variable are refused in one line."""
    _clear_key_environment(monkeypatch)
    path = tmp_path / "keys.json"
    path.write_text(KEY_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    path.chmod(0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    before = load_keys()
    new_id = f"hdh-it-{uuid.uuid4().hex[:8]}"
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()

    assert main(["keys", "rotate", "--destination", "hdh", "--key-id", new_id]) == 0
    assert capsys.readouterr().out.startswith(f"hdh: {new_id} is now the current key")

    after = load_keys()  # what a worker started now loads
    assert after.current("hdh").key_id == new_id
    assert after.all("hdh")[1:] == before.all("hdh")  # every older key kept, secrets unchanged
    assert after.all("inca") == before.all("inca") and after.all("opposition") == before.all("opposition")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]

    rotations = [e for e in _audit_list(capsys, "--since", since, "--action", "key_rotation")]
    (entry,) = [e for e in rotations if e["attributes"].get("key_id") == new_id]
    assert (entry["who"], entry["channel"], entry["targets"], entry["outcome"]) == (
        getpass.getuser(),
        "cli",
        ["hdh"],
        "ok",
    )
    secret = base64.b64encode(after.current("hdh").secret).decode()
    assert secret not in json.dumps(rotations)

    # keys from the environment: one line saying where to rotate, nothing written anywhere
    monkeypatch.setenv(f"{ENV_PREFIX}HDH", f"env-k1:{secret}")
    rotated = path.read_bytes()
    assert main(["keys", "rotate", "--destination", "hdh"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"affluent: error: the keys of ring hdh come from {ENV_PREFIX}HDH")
    assert secret not in line and path.read_bytes() == rotated


def test_device_links_and_tokens_are_in_the_trail_without_the_patient(
    settings, live_kafka, registry, monkeypatch, capsys
) -> None:
    """``affluent devices link|unlink`` and the token commands on the real trail: the device id and the
    outcome (a refused overlapping link too), the token's name and component — never the patient, the
    token or its hash."""
    run = uuid.uuid4().hex[:8]
    device = f"BPM-IT-{run}"
    ipp = f"P{run}"
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    linked_from = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    common = ["--ipp", ipp, "--authority", AUTHORITY, "--ins", cs.NIR_QUALIFIED]
    common += ["--ins-oid", cs.TEST_OID, "--ins-qualified"]

    assert main(["devices", "link", device, *common, "--from", linked_from.isoformat()]) == 0
    # the same period again overlaps the first: refused by the registry's rule, and recorded as refused
    end = linked_from + timedelta(hours=1)
    args = ["devices", "link", device, *common, "--from", linked_from.isoformat(), "--to", end.isoformat()]
    assert main(args) == 2
    assert main(["devices", "unlink", device]) == 0
    assert main(["devices", "token", "--sender", f"GW-{run}"]) == 0
    shown = next(line for line in capsys.readouterr().out.splitlines() if "shown once" in line)
    token = shown.rsplit(" ", 1)[1]

    entries = _audit_list(capsys, "--since", since)
    mine = [(e["action"], e["outcome"], e["reason"]) for e in entries if e["targets"] == [device]]
    assert mine == [
        ("device_link", "ok", None),
        ("device_link", "refused", "invalid_request"),
        ("device_unlink", "ok", None),
    ]
    assert {e["who"] for e in entries if e["targets"] == [device]} == {getpass.getuser()}
    (made,) = [e for e in entries if e["targets"] == [f"GW-{run}"]]
    assert (made["action"], made["attributes"]) == ("token_created", {"component": "devices"})
    text = json.dumps(entries)
    for secret in (
        ipp,
        cs.NIR_QUALIFIED,
        cs.NIR_QUALIFIED[:13],
        token,
        hashlib.sha256(token.encode()).hexdigest(),
    ):
        assert secret not in text
