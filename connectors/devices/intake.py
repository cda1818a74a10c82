"""What the device doors decide before storing: who is sending, and the raw record to write.

Pure functions shared by the HTTP and MQTT doors, so that both store the same raw record for the same
reading and the normalize stage cannot tell them apart except by ``connector``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Final

from affluent.core.auth import token_digest
from affluent.core.settings import DeviceToken
from connectors.raw import RawMessage
from formats.devices.registry import DeviceRegistry
from formats.devices.templates import MAPPING_ATTRIBUTE, PayloadError, Reading, Template, read_payload
from formats.reasons import ReasonCode

PROTOCOL: Final = "device"
CONTENT_TYPE: Final = "application/json"


# What settings store for a token (``affluent devices token`` prints it for a new one).
token_hash = token_digest


def authenticate(tokens: Sequence[DeviceToken], presented: str | None) -> DeviceToken | None:
    """The token entry a bearer token belongs to, or None.

    Every entry is compared, in constant time, whatever matched before: the time taken says nothing
    about which entry or how many characters were right.
    """
    if not presented:
        return None
    digest = token_digest(presented).encode()
    found: DeviceToken | None = None
    for entry in tokens:
        if hmac.compare_digest(digest, entry.sha256.encode()):
            found = entry
    return found


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def may_post(token: DeviceToken, mapping: str) -> bool:
    return not token.mappings or mapping in token.mappings


def payload_raw_id(sender: str, mapping: str, payload: bytes) -> str:
    """The raw id of a payload: what it is stored under, or — over MQTT, where there is no refusal to
    give — dead-lettered under, so that a sender's accounting can follow every message it published."""
    return RawMessage(PROTOCOL, "", sender, mapping, payload, CONTENT_TYPE).raw_id


def raw_message(
    connector: str, sender: str, template: Template, payload: bytes, readings: int, peer: str | None = None
) -> RawMessage:
    """The raw record of one accepted payload: untouched bytes, and the template name for normalize.

    No message id: a resent payload hashes to the same raw id (and its readings to the same event ids).
    """
    return RawMessage(
        protocol=PROTOCOL,
        connector=connector,
        facility=sender,
        application=template.name,
        payload=payload,
        content_type=CONTENT_TYPE,
        message_type=f"{template.name}/v{template.version}",
        peer=peer,
        attributes={
            MAPPING_ATTRIBUTE: template.name,
            "template_version": str(template.version),
            "readings": str(readings),
        },
    )


def unbound_reading(
    registry: DeviceRegistry | None, readings: Sequence[Reading], sender: str | None, require_binding: bool
) -> Reading | None:
    """The first reading whose device ``sender`` may not send for (both doors ask this); None if all may."""
    if registry is None:
        return None
    for reading in readings:
        if not registry.may_send(reading.device_id, reading.time.instant, sender, require_binding):
            return reading
    return None


def judge(
    templates: Mapping[str, Template],
    mapping: str,
    payload: bytes,
    registry: DeviceRegistry | None,
    gateway: str | None,
    require_binding: bool,
) -> tuple[Template, list[Reading]]:
    """Whether a payload may be stored, as the MQTT door decides it (and ``dlq redrive`` again, later):
    its template reads every reading, and every device may be sent for by this gateway. Raises the
    :class:`PayloadError` its dead letter names."""
    template = templates.get(mapping)
    if template is None:
        raise PayloadError(ReasonCode.UNKNOWN_MAPPING, "no mapping template for this MQTT topic")
    readings = read_payload(template, payload)
    refused = unbound_reading(registry, readings, gateway, require_binding)
    if refused is not None:
        code = ReasonCode.DEVICE_NOT_BOUND
        raise PayloadError(code, code.text, refused.location)
    return template, list(readings)
