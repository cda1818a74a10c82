"""The device registry: which patient a device measured, and when.

A home device changes hands (returned, cleaned, lent to the next patient), so a link has a validity
period and a reading belongs to whoever held the device *at the reading's time*, not at arrival time —
which also makes a replay of old raw data give the same answer. The registry lives in the compacted
topic ``control.devices``: key = device id (never a patient id), value = the device's whole link
history as JSON, so the last record per key is all one needs. Workers hold it in memory through
:class:`affluent.core.compacted.CompactedView`; ``affluent devices link|unlink|list`` write and read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from affluent.core.errors import ConfigError
from formats.clinical.identity import IdentityError, ins_from, patient_ref_of
from formats.reasons import ReasonCode


@dataclass(frozen=True, slots=True)
class Link:
    ipp: str
    authority: str  # OID or namespace of the IPP's assigning authority
    valid_from: datetime
    valid_to: datetime | None = None  # open-ended while the patient holds the device
    ins: str | None = None
    ins_oid: str | None = None
    ins_qualified: bool = False
    # The sender (device token's sender, MQTT gateway) that alone may send this device's readings for
    # the period; None for links written without one (any sender, unless the door requires binding).
    gateway: str | None = None

    def covers(self, when: datetime) -> bool:
        return self.valid_from <= when and (self.valid_to is None or when < self.valid_to)

    def patient_ref(self) -> dict[str, Any]:
        ins = ins_from(self.ins, self.ins_oid) if self.ins and self.ins_oid else None
        return patient_ref_of(self.ipp, self.authority, ins, self.ins_qualified)

    def as_json(self) -> dict[str, Any]:
        return {
            "ipp": self.ipp,
            "authority": self.authority,
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat() if self.valid_to else None,
            "ins": self.ins,
            "ins_oid": self.ins_oid,
            "ins_qualified": self.ins_qualified,
            **({"gateway": self.gateway} if self.gateway is not None else {}),
        }


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def decode_links(value: bytes) -> list[Link]:
    items = json.loads(value)
    return [
        Link(
            ipp=item["ipp"],
            authority=item["authority"],
            valid_from=_instant(item["valid_from"]),
            valid_to=_instant(item["valid_to"]) if item.get("valid_to") else None,
            ins=item.get("ins"),
            ins_oid=item.get("ins_oid"),
            ins_qualified=bool(item.get("ins_qualified", False)),
            gateway=item.get("gateway"),
        )
        for item in items["links"]
    ]


def encode_links(device_id: str, links: list[Link]) -> bytes:
    return json.dumps({"device_id": device_id, "links": [link.as_json() for link in links]}).encode()


def add_link(links: list[Link], new: Link) -> list[Link]:
    """Link a device from ``new.valid_from``: the open link of the previous holder ends there.

    Overlapping closed periods are refused: a reading must never belong to two patients.
    """
    if new.valid_to is not None and new.valid_to <= new.valid_from:
        raise ConfigError("a link must end after it starts")
    if new.ins:
        if not new.ins_oid:
            raise ConfigError("an INS needs its OID (e.g. 1.2.250.1.213.1.4.8)")
        try:
            if ins_from(new.ins, new.ins_oid) is None:
                raise ConfigError("the INS OID is not an INS OID")
        except IdentityError as exc:
            raise ConfigError(str(exc)) from None
    out: list[Link] = []
    for link in links:
        if link.valid_to is None and link.valid_from < new.valid_from:
            link = replace(link, valid_to=new.valid_from)
        end = new.valid_to
        overlaps = link.valid_from < (end or datetime.max.replace(tzinfo=UTC)) and (
            link.valid_to is None or new.valid_from < link.valid_to
        )
        if overlaps:
            raise ConfigError("the new link overlaps an existing period of this device")
        out.append(link)
    return sorted([*out, new], key=lambda link: link.valid_from)


def end_link(links: list[Link], at: datetime) -> list[Link]:
    """Unlink: the open period ends at ``at``; later readings go to the DLQ until the next link."""
    open_links = [link for link in links if link.valid_to is None]
    if not open_links:
        raise ConfigError("the device has no open link")
    if at <= open_links[0].valid_from:
        raise ConfigError("a link must end after it starts")
    return [replace(link, valid_to=at) if link.valid_to is None else link for link in links]


@dataclass(frozen=True, slots=True)
class Resolution:
    patient: dict[str, Any] | None
    reason_code: ReasonCode | None = None  # UNKNOWN_DEVICE | UNLINKED_DEVICE when patient is None


class DeviceRegistry:
    """Resolves (device, reading time) to a patient from any key → value getter (a CompactedView's get,
    or a dict's get in tests and in ``test-mapping``)."""

    def __init__(self, get: Callable[[str], bytes | None]) -> None:
        self._get = get
        self._cache: dict[bytes, list[Link]] = {}

    def links(self, device_id: str) -> list[Link] | None:
        value = self._get(device_id)
        if value is None:
            return None
        links = self._cache.get(value)
        if links is None:
            links = decode_links(value)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[value] = links
        return links

    def may_send(self, device_id: str, when: datetime, sender: str | None, require_binding: bool) -> bool:
        """Whether ``sender`` may send the reading a device took at ``when``: a gateway can otherwise put
        readings in the record of any patient whose device id it knows. A link naming a gateway admits
        that sender only; with ``require_binding``, a device without such a link admits nobody."""
        link = next((link for link in self.links(device_id) or () if link.covers(when)), None)
        if link is None or link.gateway is None:
            return not require_binding
        return sender == link.gateway

    def resolve(self, device_id: str, when: datetime) -> Resolution:
        links = self.links(device_id)
        if not links:
            return Resolution(None, ReasonCode.UNKNOWN_DEVICE)
        for link in links:
            if link.covers(when):
                return Resolution(link.patient_ref())
        return Resolution(None, ReasonCode.UNLINKED_DEVICE)
