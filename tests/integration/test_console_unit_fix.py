"""Issue #22's "done when", on the real stack, in a real headless Chromium.

A connected scale publishes over MQTT (a real Mosquitto) a weight in ``livres``, a spelling the hub
does not know: the MQTT door of a real ``affluent run`` acknowledges the broker and dead-letters the
payload (``unknown_unit``). An operator finds it in the console, sees the dry run say it would be
refused again, adds one line to the device template (``units: {livres: '[lb_av]'}``), restarts the
normalize worker so it loads the template, sees the verdict turn to "maps now", re-drives it from the
console, and traces it to its national record. The audit trail shows who re-drove it, over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from affluent import dlq
from affluent.console.server import Console
from affluent.core.settings import ConsoleSettings, DeviceMqttSettings, DeviceSettings, Settings
from affluent.core.topics import DLQ_INGEST
from affluent.devices_cli import link
from affluent.sim.synthetic import HOSPITAL_OID
from connectors.devices.intake import payload_raw_id
from formats.devices.registry import Link
from formats.devices.templates import TEMPLATES_DIR
from schemas.audit import AuditAction
from schemas.audit_log import read_entries
from streams.pseudonymize.worker import KEY_FILE_ENV
from tests.support.cdp import browser, chromium
from tests.support.console import WAIT_S, restart, supervised_workers, wait_for
from tests.support.devices import sample
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.pipeline import KEY_FILE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="no chromium: scripts/system-deps installs it"),
]

CONSOLE_TOKEN = "console-unit-fix-token-not-a-secret"
FIX = "units: {livres: '[lb_av]'}\n"  # the one-line mapping change


def publish(port: int, topic: str, payload: bytes) -> None:
    """One QoS 1 publish, acknowledged by the broker (the gateway's job is then done)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex[:8]}"
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def ingest_letters(settings: Settings, raw_id: str, since: datetime) -> list[dict[str, object]]:
    return [r for _, r in dlq.read(settings, [DLQ_INGEST], since) if r.get("raw_id") == raw_id]


async def test_a_missing_unit_is_fixed_by_one_line_redriven_from_the_console_and_traced(
    settings: Settings, live_kafka, registry, tmp_path: Path, monkeypatch
) -> None:
    run = uuid.uuid4().hex[:8]
    who, device = f"it-unit-fix-{run}", f"SC-UNIT-{run}"
    topic = f"it-unit-{run}/GW-1/scale"
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    since = quote(started.isoformat())
    monkeypatch.setenv(KEY_FILE_ENV, str(KEY_FILE))  # the console's trace recognises national records

    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    now = int(time.time())
    payload = (
        sample("scale-nested")
        .replace(b"SC-7781", device.encode())
        .replace(b'"lb"', b'"livres"')
        .replace(b"1795501800", str(now - 120).encode())
        .replace(b"1795501860", str(now - 60).encode())
    )
    raw_id = payload_raw_id(topic, "scale-nested", payload)
    await asyncio.to_thread(
        link, settings, device, Link(f"8{run[:7]}", HOSPITAL_OID, datetime(2026, 1, 1, tzinfo=UTC))
    )

    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    mqtt_topics = {f"it-unit-{run}/+/scale": "scale-nested"}
    env = {
        "AFFLUENT_DEVICES__TEMPLATES_DIR": str(templates),
        "AFFLUENT_DEVICES__PORT": str(free_port()),
        "AFFLUENT_DEVICES__METRICS_PORT": str(free_port()),
        "AFFLUENT_DEVICES__MQTT__ENABLED": "true",
        "AFFLUENT_DEVICES__MQTT__PORT": str(broker.port),
        "AFFLUENT_DEVICES__MQTT__CLIENT_ID": f"affluent-it-{run}",
        "AFFLUENT_DEVICES__MQTT__TOPICS": json.dumps(mqtt_topics),
    }
    try:
        with supervised_workers(tmp_path, run, ("devices", "normalize", "pseudonymize"), env) as run_port:
            await asyncio.to_thread(publish, broker.port, topic, payload)
            [letter] = await asyncio.to_thread(
                wait_for, "the unknown_unit dead letter", lambda: ingest_letters(settings, raw_id, started)
            )
            assert (letter["reason_code"], letter["location"]) == ("unknown_unit", "$.readings[0]:weight")

            devices = DeviceSettings(templates_dir=templates, mqtt=DeviceMqttSettings(topics=mqtt_topics))
            console_settings = ConsoleSettings(
                token_sha256={who: hashlib.sha256(CONSOLE_TOKEN.encode()).hexdigest()},
                supervisor_url=f"http://127.0.0.1:{run_port}/health",
            )
            console = Console(settings.model_copy(update={"console": console_settings, "devices": devices}))
            base = f"http://127.0.0.1:{await console.start(port=0)}"
            try:
                async with browser(tmp_path / "chromium") as page:
                    await page.navigate(f"{base}/dlq/{raw_id}?since={since}")
                    await page.submit("form[action='/login']", {"token": CONSOLE_TOKEN})
                    text = await page.text()
                    assert "unknown_unit" in text and "livres" in text
                    assert "refused again for unknown_unit" in text

                    # the fix: one line in the template; normalize restarted so it maps the unit too
                    with (templates / "scale-nested.yaml").open("a", encoding="utf-8") as template:
                        template.write(FIX)
                    await asyncio.to_thread(restart, run_port, "normalize")
                    await page.navigate(f"{base}/dlq/{raw_id}?since={since}")
                    text = await page.text()
                    assert "maps now (2 readings)" in text and "was refused for unknown_unit" in text
                    await page.submit("form#redrive", {"why": f"TICKET-UNIT-{run}"})
                    text = await page.text()
                    assert "Re-driven" in text and "sent again to ingest.device.raw" in text

                    # traced to its national record
                    await page.navigate(f"{base}/trace?q={raw_id}&since={since}")
                    deadline = time.monotonic() + WAIT_S
                    while await page.evaluate("document.querySelector('.badge').innerText") != "arrived":
                        assert time.monotonic() < deadline, await page.text()
                        await asyncio.sleep(1)
                        await page.navigate(f"{base}/trace?q={raw_id}&since={since}")
                    text = await page.text()
                    assert f"raw id {raw_id[:16]}" in text and "national.hdh.observation.v1" in text
                    assert "dead letter dlq.ingest" in text and "unknown_unit" in text  # its history too
            finally:
                await console.stop()
    finally:
        broker.stop()

    entries = await asyncio.to_thread(read_entries, settings, started, None, AuditAction.REDRIVE)
    [redrive] = [e for e in entries if e["who"] == who]
    assert (redrive["channel"], redrive["targets"], redrive["outcome"]) == ("http", [raw_id], "ok")
    assert redrive["attributes"]["why"] == f"TICKET-UNIT-{run}"
