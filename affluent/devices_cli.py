"""Command-line entry points of the device doors, for ``affluent/cli.py`` to wire in.

- ``test_mapping``: the canonical Observations a payload yields under a template (no Kafka needed);
- ``link`` / ``unlink`` / ``listing``: the device registry in ``control.devices`` (link and unlink in the
  audit trail: who, the device id, the outcome — never the patient);
- ``new_token``: a random bearer token and the hash that goes into settings.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from affluent.audit_cli import checked_entry, os_user, record_refusal
from affluent.core.compacted import CompactedView
from affluent.core.errors import ConfigError, KafkaUnavailable
from affluent.core.kafka import TopicSpec, ensure_topics, make_producer, wait_for_kafka
from affluent.core.settings import Settings
from affluent.core.topics import COMPACTED_CONFIG, CONTROL_DEVICES
from connectors.devices.intake import token_hash
from formats.devices.registry import Link, Resolution, add_link, decode_links, encode_links, end_link
from formats.devices.templates import Template, load_template, load_templates
from schemas.audit import AuditAction, AuditOutcome, AuditReason
from schemas.audit_log import record_now
from streams.normalize.device import DeviceMapper
from streams.normalize.envelope import RawContext
from streams.normalize.options import MappingOptions

PLACEHOLDER_PATIENT = {
    "key": "<device registry>",
    "ipp": {"id": "<device registry>", "authority_name": None, "authority_oid": None},
    "ins": None,
    "identity_reliability": None,
    "ins_qualified": False,
}


class _EveryDeviceLinked:
    """test-mapping shows the mapping, not the registry: every device resolves to a placeholder."""

    def resolve(self, device_id: str, when: Any) -> Resolution:
        return Resolution(dict(PLACEHOLDER_PATIENT))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def find_template(settings: Settings, name_or_path: str) -> Template:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_template(path)
    templates = load_templates(settings.devices.templates_dir)
    if name_or_path not in templates:
        known = ", ".join(sorted(templates))
        raise ConfigError(f"no template file or name {name_or_path!r} (known: {known})")
    return templates[name_or_path]


def test_mapping(settings: Settings, name_or_path: str, payload_path: Path) -> list[dict[str, Any]]:
    """The Observations as JSON-ready dicts; MappingError says why the door would answer 400."""
    template = find_template(settings, name_or_path)
    try:
        payload = payload_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {payload_path} ({type(exc).__name__})") from None
    now = datetime.now(UTC)
    ctx = RawContext(
        raw_id="test-mapping",
        protocol="device",
        connector="devices_http",
        facility="test-mapping",
        application=template.name,
        message_id="test-mapping",
        received_at=now,
        attributes={"mapping": template.name},
    )
    mapper = DeviceMapper({template.name: template}, _EveryDeviceLinked())
    events = mapper(payload, ctx, MappingOptions())
    return [_plain(e.record) for e in events]


def _read(settings: Settings) -> CompactedView:
    wait_for_kafka(settings.kafka, 30)
    ensure_topics(settings.kafka, [TopicSpec(CONTROL_DEVICES, config=COMPACTED_CONFIG)])
    view = CompactedView(settings.kafka, CONTROL_DEVICES, name="device-registry-cli")
    view.start()
    return view


def _write(settings: Settings, device_id: str, links: list[Link]) -> None:
    _write_all(settings, {device_id: links})


def _write_all(settings: Settings, histories: Mapping[str, list[Link]]) -> None:
    producer = make_producer(settings.kafka, acks="all")
    failures: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(type(err).__name__)

    for device_id, links in histories.items():
        producer.produce(
            CONTROL_DEVICES, key=device_id.encode(), value=encode_links(device_id, links), on_delivery=report
        )
    if producer.flush(30) or failures:
        raise KafkaUnavailable("the device registry change was not confirmed by Kafka")


def _current(view: CompactedView, device_id: str) -> list[Link]:
    value = view.get(device_id)
    return decode_links(value) if value is not None else []


def _change(
    settings: Settings,
    device_id: str,
    change: Callable[[list[Link]], list[Link]],
    action: AuditAction,
    who: str | None,
) -> list[Link]:
    """Read the device's history to the end of the topic, apply one change, write the whole history —
    audited: the entry (who, the device id, never the patient) is confirmed by Kafka before the registry
    changes, so no entry, no change. A change the registry's rules refuse, or a write Kafka does not
    confirm, adds a ``refused`` entry (best effort) and raises as before."""
    who = who or os_user()
    checked_entry(action, [device_id], "the device id", who=who)  # an id the trail refuses: nothing read
    view = _read(settings)
    try:
        try:
            links = change(_current(view, device_id))
        except ConfigError:
            refused = (AuditOutcome.REFUSED, AuditReason.INVALID_REQUEST)
            record_refusal(settings, checked_entry(action, [device_id], "the device id", *refused, who=who))
            raise
    finally:
        view.stop()
    record_now(settings, checked_entry(action, [device_id], "the device id", who=who))
    try:
        _write(settings, device_id, links)
    except KafkaUnavailable:
        refused = (AuditOutcome.REFUSED, AuditReason.KAFKA_UNAVAILABLE)
        record_refusal(settings, checked_entry(action, [device_id], "the device id", *refused, who=who))
        raise
    return links


def link(settings: Settings, device_id: str, new: Link, who: str | None = None) -> int:
    """Link a device to a patient from ``new.valid_from`` (``affluent devices link``), audited as
    ``device_link`` by ``who`` (default: the OS user). Returns the periods on record."""
    if device_id in {new.ipp, new.ins, f"{new.ipp}@{new.authority}"}:
        raise ConfigError("the device id is the patient's identifier: give the device's own serial or id")
    return len(_change(settings, device_id, lambda links: add_link(links, new), AuditAction.DEVICE_LINK, who))


def link_all(settings: Settings, new: Mapping[str, Link]) -> None:
    """``link`` for many devices at once (the simulator's synthetic cohort): one read of the registry,
    one batch of writes, each device's history changed by the same rule as ``link``. Not audited: it is
    no operator's command (the simulator's device ids even embed its synthetic IPPs), and an operator
    links real devices one ``affluent devices link`` at a time."""
    view = _read(settings)
    try:
        histories = {device_id: add_link(_current(view, device_id), link) for device_id, link in new.items()}
    finally:
        view.stop()
    _write_all(settings, histories)


def unlink(settings: Settings, device_id: str, at: datetime, who: str | None = None) -> None:
    """End the device's open link at ``at`` (``affluent devices unlink``), audited as ``device_unlink``."""
    _change(settings, device_id, lambda links: end_link(links, at), AuditAction.DEVICE_UNLINK, who)


def listing(settings: Settings) -> list[str]:
    """One line per link period: device, from, to — no patient identifier on an operator's screen."""
    view = _read(settings)
    try:
        lines = []
        for device_id in sorted(view.keys()):
            for item in _current(view, device_id):
                end = item.valid_to.isoformat() if item.valid_to else "open"
                lines.append(f"{device_id}\t{item.valid_from.isoformat()}\t{end}")
        return lines
    finally:
        view.stop()


def new_token() -> tuple[str, str]:
    """(token to give the device or gateway, its sha256 for ``devices.tokens`` in settings)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def dumps(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False)
