"""Reading a topic-based Subscription notification (R4 Backport IG, and R4B's SubscriptionStatus).

A notification is a Bundle (``history`` in the R4 Backport IG, ``subscription-notification`` in R4B)
whose first entry is the subscription's status: a ``Parameters`` (backport-subscription-status-r4) or
a ``SubscriptionStatus``. Its ``type`` says what to do:

* ``handshake`` and ``heartbeat`` (and query answers) carry no data: acknowledge, store nothing;
* ``event-notification`` carries the events: with ``full-resource`` the entries hold the resources,
  stored one record per resource version; with ``id-only`` the entries (or the status's
  ``notification-event.focus``) only name them, and the door fetches each one from the notifying server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from connectors.fhir_rest.intake import Refusal
from formats.fhir.common import Issue
from formats.fhir.validate import bundle_entry_cap

NOTIFICATION_BUNDLE_TYPES: Final = frozenset({"history", "subscription-notification"})
STATUS_TYPES: Final = frozenset({"Parameters", "SubscriptionStatus"})
NOTIFICATION_KINDS: Final = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)


@dataclass(frozen=True, slots=True)
class Notification:
    kind: str
    resources: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (entry index, resource)
    references: list[str] = field(default_factory=list)  # id-only: what to fetch

    @property
    def carries_data(self) -> bool:
        return self.kind == "event-notification"


def _params(resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    params = resource.get("parameter")
    return [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []


def _kind_of(status: Mapping[str, Any]) -> str | None:
    if status.get("resourceType") == "SubscriptionStatus":
        kind = status.get("type")
        return kind if isinstance(kind, str) else None
    for param in _params(status):
        if param.get("name") == "type" and isinstance(param.get("valueCode"), str):
            return str(param["valueCode"])
    return None


def _focus_references(status: Mapping[str, Any]) -> list[str]:
    """``notification-event.focus`` (backport Parameters) or ``notificationEvent.focus`` (R4B)."""
    refs: list[Any] = []
    if status.get("resourceType") == "SubscriptionStatus":
        events = status.get("notificationEvent")
        for event in events if isinstance(events, list) else []:
            if isinstance(event, dict) and isinstance(event.get("focus"), dict):
                refs.append(event["focus"].get("reference"))
    else:
        for param in _params(status):
            if param.get("name") != "notification-event":
                continue
            parts = param.get("part")
            for part in parts if isinstance(parts, list) else []:
                if isinstance(part, dict) and part.get("name") == "focus":
                    value = part.get("valueReference")
                    refs.append(value.get("reference") if isinstance(value, dict) else None)
    return [r for r in refs if isinstance(r, str) and r]


def read_notification(bundle: Mapping[str, Any]) -> Notification:
    """Raises :class:`Refusal` (400/422) when the Bundle is not a notification this door understands."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in NOTIFICATION_BUNDLE_TYPES:
        raise Refusal(
            422,
            Issue(
                "invalid", "a notification is a history or subscription-notification Bundle", "Bundle.type"
            ),
        )
    entries = bundle.get("entry")
    cap = bundle_entry_cap()  # a notification is a Bundle: the door's cap, before any entry is read
    if cap is not None and isinstance(entries, list) and len(entries) > cap:
        raise Refusal(413, Issue("too-costly", f"the Bundle has more than {cap} entries", "Bundle.entry"))
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    status = entries[0].get("resource") if entries else None
    if not isinstance(status, dict) or status.get("resourceType") not in STATUS_TYPES:
        raise Refusal(
            422,
            Issue("required", "the first entry must be the subscription status", "Bundle.entry[0].resource"),
        )
    kind = _kind_of(status)
    if kind not in NOTIFICATION_KINDS:
        raise Refusal(422, Issue("code-invalid", "unknown notification type", "Bundle.entry[0].resource"))
    if kind != "event-notification":
        return Notification(kind)
    resources: list[tuple[int, dict[str, Any]]] = []
    references: list[str] = []
    for index, entry in enumerate(entries[1:], start=1):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            resources.append((index, resource))
        elif isinstance(entry.get("fullUrl"), str) and entry["fullUrl"]:
            references.append(entry["fullUrl"])
    if len(entries) == 1:  # id-only without entries: the status names the focus
        references = _focus_references(status)
    return Notification(kind, resources, list(dict.fromkeys(references)))
