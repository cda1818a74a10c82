"""The console in a real headless Chromium, on the real stack (issue #22, "Done when").

A blood-pressure reading of a device nobody linked yet goes through the real HTTP device door, and the
normalize worker of a real ``affluent run`` dead-letters it (``unknown_device``). In the browser an
operator logs in with a console token, sees the workers' health, finds the dead letter by reason, opens
it (the dry run says it would be refused again), links the device, sees the verdict turn to "maps
now", re-drives it through the form, and traces it to its national record. The audit trail then holds
the re-drive with who = the token's name and channel ``http``; a re-drive posted without the form's
CSRF token is refused (403) and recorded as refused.

The workers start in fresh consumer groups at the current end of their input topics (they carry the
shared topics' new records only); device, sender and token names are unique to the run. With
``AFFLUENT_CONSOLE_SCREENSHOTS=<folder>`` (``scripts/console-screenshots``) each page's screenshot is
kept there: the README's pictures are this test's pages. ``affluent console token`` prints a setting
that can be pasted as it is, and records the token's creation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from affluent import dlq
from affluent.console.server import Console
from affluent.core.settings import ConsoleSettings, DeviceSettings, DeviceToken, RegistrySettings, Settings
from affluent.devices_cli import link
from affluent.sim.synthetic import HOSPITAL_OID
from connectors.devices.intake import token_hash
from connectors.devices.service import DeviceService
from formats.devices.registry import Link
from schemas.audit import AuditAction
from schemas.audit_log import read_entries
from schemas.catalog import DLQ_NORMALIZE
from streams.pseudonymize.worker import KEY_FILE_ENV
from tests.support.cdp import browser, chromium
from tests.support.console import WAIT_S, restart, shot, supervised_workers, table, wait_for
from tests.support.pipeline import KEY_FILE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="no chromium: scripts/system-deps installs it"),
]

DEVICE_TOKEN = "console-it-device-token-not-a-secret"
CONSOLE_TOKEN = "console-it-login-token-not-a-secret"


async def post_reading(settings: Settings, sender: str, device: str, measured: datetime) -> str:
    """One bp-single reading through the real HTTP device door; returns its raw id."""
    devices = DeviceSettings(
        port=0, metrics_port=None, tokens=[DeviceToken(sha256=token_hash(DEVICE_TOKEN), sender=sender)]
    )
    door = DeviceService(settings.model_copy(update={"devices": devices}), CollectorRegistry())
    port = await door.start(with_telemetry=False)
    body = {
        "deviceId": device,
        "model": "TensioHome 3",
        "measuredAt": measured.isoformat(timespec="seconds"),
        "systolic": 128,
        "diastolic": 82,
        "pulse": 71,
    }
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/devices/bp-single",
                data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {DEVICE_TOKEN}"},
            ) as response,
        ):
            assert response.status == 202, await response.text()
            return str((await response.json())["raw_id"])
    finally:
        await door.stop()


def dead_letters(settings: Settings, raw_id: str, since: datetime) -> list[dict[str, Any]]:
    return [r for _, r in dlq.read(settings, [DLQ_NORMALIZE], since) if r.get("raw_id") == raw_id]


async def test_a_dead_letter_is_redriven_from_the_console_and_traced_to_its_national_record(
    settings: Settings, live_kafka, registry, tmp_path: Path, monkeypatch
) -> None:
    run = uuid.uuid4().hex[:8]
    device, sender, who = f"BPM-CONSOLE-{run}", f"GW-CONSOLE-{run}", f"it-console-{run}"
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    since = quote(started.isoformat())
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))  # the console's trace recognises national records

    with supervised_workers(tmp_path, run) as run_port:
        raw_id = await post_reading(settings, sender, device, datetime.now(UTC) - timedelta(minutes=1))
        letters = await asyncio.to_thread(
            wait_for, "the unknown_device dead letter", lambda: dead_letters(settings, raw_id, started)
        )
        # (one, or more if another test's normalize worker read the shared raw topic too)
        assert {letter["reason_code"] for letter in letters} == {"unknown_device"}

        digest = hashlib.sha256(CONSOLE_TOKEN.encode()).hexdigest()
        console_settings = ConsoleSettings(
            token_sha256={who: digest},
            supervisor_url=f"http://127.0.0.1:{run_port}/health",
            rate_interval_s=1.0,
        )
        console = Console(settings.model_copy(update={"console": console_settings}))
        base = f"http://127.0.0.1:{await console.start(port=0)}"
        try:
            async with browser(tmp_path / "chromium") as page:
                # log in: any page sends an unknown browser to the login form, which comes back to it
                await page.navigate(f"{base}/")
                assert "/login?next=" in await page.url()
                await page.submit("form[action='/login']", {"token": CONSOLE_TOKEN})
                assert await page.url() == f"{base}/"
                text = await page.text()
                assert who in text and "Supervisor" in text
                rows = {r[0]: r for r in await table(page) if r and r[0] in ("normalize", "pseudonymize")}
                assert {name: r[2] for name, r in rows.items()} == {
                    "normalize": "ready",
                    "pseudonymize": "ready",
                }

                # the dead letters by reason, then the raw ids of our row
                await page.navigate(f"{base}/dlq?since={since}")
                ours = [r for r in await table(page) if sender in r]
                assert [(r[0], r[1], r[2]) for r in ours] == [
                    ("dlq.normalize", "normalize", "unknown_device")
                ]
                assert int(ours[0][4]) >= 1
                await shot(page, tmp_path, "console-dlq.png")
                href = await page.evaluate(
                    f"[...document.querySelectorAll('a')].find(a => a.href.includes({json.dumps(quote(sender))})).href"
                )
                await page.navigate(href)
                assert raw_id in await page.text()

                # the dead letter: reason, payload, and a dry run that says it would be refused again
                await page.navigate(f"{base}/dlq/{raw_id}?since={since}")
                text = await page.text()
                assert "unknown_device" in text and device in text
                assert "would be refused again" in text and "refused again for unknown_device" in text

                # the fix: link the device; a restarted worker reads the registry before mapping anything
                await asyncio.to_thread(
                    link,
                    settings,
                    device,
                    Link(f"9{run[:7]}", HOSPITAL_OID, datetime(2026, 1, 1, tzinfo=UTC)),
                )
                await asyncio.to_thread(restart, run_port)
                await page.navigate(f"{base}/dlq/{raw_id}?since={since}")
                text = await page.text()
                assert "maps now" in text and "was refused for unknown_device" in text
                await page.evaluate(
                    "document.querySelector('form#redrive').elements['why'].value = 'IT-CONSOLE-42'"
                )
                await shot(page, tmp_path, "console-dead-letter.png")
                await page.submit("form#redrive", {"why": f"IT-CONSOLE-{run}"})
                text = await page.text()
                assert "Re-driven" in text and "re-driven: 1 " in text

                # the trace, from the search box, until the national record is there
                await page.navigate(f"{base}/trace")
                await page.submit("form[action='/trace']", {"q": raw_id, "since": started.isoformat()})
                traced = await page.url()
                deadline = time.monotonic() + WAIT_S
                while await page.evaluate("document.querySelector('.badge').innerText") != "arrived":
                    assert time.monotonic() < deadline, await page.text()
                    await asyncio.sleep(1)
                    await page.navigate(traced)
                text = await page.text()
                assert f"raw id {raw_id[:16]}" in text and "national.hdh.observation" in text
                assert "arrived: yes" in text
                await shot(page, tmp_path, "console-trace.png")

                # back to health: the restart is counted, and the channels have rates
                device_rate = ("normalize", "raw records read (device)")
                deadline = time.monotonic() + WAIT_S
                while True:
                    await page.navigate(f"{base}/")
                    rates = (
                        {(r[0], r[1]) for r in await table(page, 1)}
                        if "per second" in await page.text()
                        else set()
                    )
                    if device_rate in rates:
                        break
                    assert time.monotonic() < deadline, await page.text()
                    await asyncio.sleep(1)
                rows = {r[0]: r for r in await table(page) if r}
                assert (rows["normalize"][2], rows["normalize"][4]) == ("ready", "1")  # state, restarts
                await shot(page, tmp_path, "console-health.png")

            # the audit trail: the re-drive, by the token's name, over HTTP; the reads before it
            entries = await asyncio.to_thread(read_entries, settings, started)
            mine = [e for e in entries if e["who"] == who]
            [redrive] = [e for e in mine if e["action"] == AuditAction.REDRIVE.value]
            assert (redrive["channel"], redrive["targets"], redrive["outcome"]) == ("http", [raw_id], "ok")
            assert redrive["attributes"]["why"] == f"IT-CONSOLE-{run}"
            reads = [e for e in mine if e["action"] == AuditAction.TOPIC_READ.value]
            assert reads and {e["channel"] for e in reads} == {"http"}
            assert any("dlq.normalize" in e["targets"] for e in reads)

            # a re-drive without the form's CSRF token: 403, and the refusal is in the trail
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{base}/dlq/{raw_id}/redrive",
                    data={"why": "forged"},
                    headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
                ) as response,
            ):
                assert response.status == 403
                assert "CSRF" in await response.text()
            entries = await asyncio.to_thread(read_entries, settings, started, None, AuditAction.REDRIVE)
            refused = [e for e in entries if e["who"] == who and e["outcome"] == "refused"]
            assert [(e["channel"], e["targets"], e["reason"]) for e in refused] == [
                ("http", [raw_id], "unauthorized")
            ]
        finally:
            await console.stop()


async def test_registry_down_is_a_503_page_not_a_traceback(settings: Settings, live_kafka) -> None:
    broken = settings.model_copy(
        update={
            "registry": RegistrySettings(url="http://127.0.0.1:1/apis/ccompat/v7", timeout_s=2),
            "console": ConsoleSettings(
                token_sha256={"it-console": hashlib.sha256(CONSOLE_TOKEN.encode()).hexdigest()}
            ),
        }
    )
    console = Console(broken)
    port = await console.start(port=0)
    try:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"}) as session,
            session.get(f"http://127.0.0.1:{port}/dlq/{'cd' * 32}") as response,
        ):
            body = await response.text()
        assert response.status == 503, body
        assert "schema registry at http://127.0.0.1:1" in body and "Traceback" not in body
    finally:
        await console.stop()


def test_console_token_prints_a_pasteable_setting_and_is_audited(settings: Settings, live_kafka) -> None:
    name = f"it-console-token-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC) - timedelta(seconds=5)
    done = subprocess.run(
        [sys.executable, "-m", "affluent.cli", "console", "token", "--name", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    token_line, setting_line = done.stdout.strip().splitlines()
    token = token_line.rsplit(": ", 1)[1]
    variable, _, quoted = setting_line.partition("=")
    assert variable == "AFFLUENT_CONSOLE__TOKEN_SHA256"
    digests = json.loads(quoted.strip("'"))
    assert digests == {name: hashlib.sha256(token.encode()).hexdigest()}
    assert ConsoleSettings(token_sha256=digests).token_sha256 == digests  # the setting takes it as printed
    entries = read_entries(settings, before, None, AuditAction.TOKEN_CREATED)
    assert [(e["targets"], e["attributes"]["component"]) for e in entries if name in e["targets"]] == [
        ([name], "console")
    ]
