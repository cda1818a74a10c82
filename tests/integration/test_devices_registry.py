"""`affluent devices link|unlink|list` against the real broker: what they write to ``control.devices``
is what the normalize stage's registry resolves (synthetic devices with unique ids; the shared topic is
never assumed empty)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from affluent.core.compacted import CompactedView
from affluent.core.errors import ConfigError
from affluent.core.settings import Settings
from affluent.core.topics import CONTROL_DEVICES
from affluent.devices_cli import link, listing, unlink
from affluent.sim.synthetic import HOSPITAL_OID
from formats.devices.registry import DeviceRegistry, Link

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def test_link_unlink_list_round_trip(settings: Settings, live_kafka) -> None:
    device = f"TEST-{uuid.uuid4().hex[:10]}"
    assert link(settings, device, Link("00900201", HOSPITAL_OID, T0)) == 1
    assert link(settings, device, Link("00900202", HOSPITAL_OID, T0 + timedelta(days=10))) == 2
    unlink(settings, device, T0 + timedelta(days=20))
    with pytest.raises(ConfigError, match="no open link"):
        unlink(settings, device, T0 + timedelta(days=30))

    view = CompactedView(settings.kafka, CONTROL_DEVICES, name="test-device-registry")
    view.start()
    try:
        registry = DeviceRegistry(view.get)
        first = registry.resolve(device, T0 + timedelta(days=1)).patient
        second = registry.resolve(device, T0 + timedelta(days=15)).patient
        assert first is not None and first["key"] == f"00900201@{HOSPITAL_OID}"
        assert second is not None and second["key"] == f"00900202@{HOSPITAL_OID}"
        assert registry.resolve(device, T0 + timedelta(days=25)).reason_code == "unlinked_device"
    finally:
        view.stop()
    lines = [line for line in listing(settings) if line.startswith(device)]
    assert lines == [
        f"{device}\t{T0.isoformat()}\t{(T0 + timedelta(days=10)).isoformat()}",
        f"{device}\t{(T0 + timedelta(days=10)).isoformat()}\t{(T0 + timedelta(days=20)).isoformat()}",
    ]
    assert all("0090020" not in line for line in lines)  # no patient id on an operator's screen
