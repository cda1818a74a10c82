"""`affluent devices test-mapping` and `token`: what an integrator sees, without Kafka."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from affluent.cli import main
from tests.support.devices import CORPUS


def test_test_mapping_prints_the_canonical_observations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "test-mapping", "scale-nested", str(CORPUS / "scale-nested.json")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["code"]["code"], r["value_quantity"]["unit"]) for r in records] == [
        ("29463-7", "kg"),
        ("8310-5", "Cel"),
    ]
    assert records[0]["effective_time"] == "2026-11-24T06:30:00+00:00"


def test_test_mapping_says_why_a_payload_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "bad.json"
    payload.write_text(
        '{"deviceId": "D", "measuredAt": "2026-11-24T08:15:00Z", "systolic": 500, "diastolic": 80}'
    )
    assert main(["devices", "test-mapping", "bp-single", str(payload)]) == 1
    assert capsys.readouterr().err.strip() == (
        "refused (implausible_value) at $:systolic: the value is outside the plausible range of systolic"
    )


def test_a_broken_template_file_is_one_clear_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "mine.yaml"
    template.write_text("template: mine\nversion: 1\ndevice: {id: $.d}\ntime: $.t\nobservations: []\n")
    assert main(["devices", "test-mapping", str(template), str(CORPUS / "bp-single.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        "affluent: error: mine.yaml.observations: expected a non-empty list"
    )


def test_token_prints_a_token_and_only_its_hash_for_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("affluent.audit_cli.record_now", lambda *a, **k: None)  # the token_created entry
    assert main(["devices", "token", "--sender", "GW-9"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    token = first.rsplit(" ", 1)[1]
    assert hashlib.sha256(token.encode()).hexdigest() in second and token not in second
