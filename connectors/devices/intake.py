"""What the device doors decide before storing: who is sending, and the raw record to write.

Pure functions shared by the HTTP and MQTT doors, so that both store the same raw record for the same
reading and the normalize stage cannot tell them apart except by ``connector``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from affluent.core.auth import token_digest
from affluent.core.settings import DeviceToken
from connectors.raw import RawMessage
from formats.devices.templates import MAPPING_ATTRIBUTE, Template

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
