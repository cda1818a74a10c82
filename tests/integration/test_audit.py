"""The audit trail on the real broker and registry: an objection through the CLI and through the HTTP
endpoint, and a ``tail`` of a canonical topic, each leave one entry that ``affluent audit list --json``
shows with who, what and the outcome right — and no identity in clear."""

from __future__ import annotations

import asyncio
import getpass
import json
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
