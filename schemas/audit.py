"""The audit trail's entries, as pure data: who did what, when, on what, and with which outcome.

An entry names its objects by id only — the keyed hashes ``control.opposition`` holds, a topic name, a
component name, a hash of the settings, a key ring and key id (never a secret), a token's name (never
the token or its hash), a device id (never the patient it is linked to) — so ``control.audit`` never
becomes one more copy of patient data. :func:`audit_entry` is the only way to build one and refuses
anything that is not such an id (a bare INS or IPP, a 13-digit run anywhere, a free attribute name), so
a caller's mistake fails here, before Kafka, rather than leaking into a topic kept for more than a year.

Writing and reading the topic is :mod:`schemas.audit_log`'s; this module does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from affluent.core.topics import CONTROL_AUDIT
from formats.clinical.identity import valid_matricule

NATIONAL_PREFIX = "national."


class AuditAction(StrEnum):
    OPPOSITION_ADD = "opposition_add"
    OPPOSITION_REMOVE = "opposition_remove"
    TOPIC_READ = "topic_read"
    CONFIG_LOADED = "config_loaded"
    REDRIVE = "redrive"
    REPLAY = "replay"
    KEY_ROTATION = "key_rotation"
    TOKEN_CREATED = "token_created"
    DEVICE_LINK = "device_link"
    DEVICE_UNLINK = "device_unlink"


class AuditChannel(StrEnum):
    CLI = "cli"
    HTTP = "http"
    PROCESS = "process"


class AuditOutcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"


class AuditReason(StrEnum):
    UNAUTHORIZED = "unauthorized"
    INVALID_REQUEST = "invalid_request"
    KAFKA_UNAVAILABLE = "kafka_unavailable"


# The caller could not be identified (an HTTP request without a valid bearer token).
UNKNOWN_CALLER = "-"
ATTRIBUTES = frozenset(
    {
        "settings_sha256",
        "components",
        "host",
        "pid",
        "version",
        "why",
        "forced",
        # A pseudonymization key's id (never its secret): the one a rotation made current …
        "key_id",
        # … and, at a pseudonymize worker's start, the current one per ring: ``hdh:<id>,inca:<id>,…``.
        "key_ids",
        # What a token is for: the component that will check it (``opposition``, ``devices``).
        "component",
    }
)

# ``<key_id>:<base32 HMAC>``: the only form an objection has in control.opposition (pseudonym.py).
_OPPOSITION_KEY = re.compile(r"[A-Za-z0-9._-]{1,100}:[a-z2-7]{52}")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_COMPONENT = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A key ring is a destination name (streams/pseudonymize/keys.py); a key id prefixes every pseudonym.
_RING = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_IDS = re.compile(rf"{_RING.pattern}:{_KEY_ID.pattern}(,{_RING.pattern}:{_KEY_ID.pattern}){{0,15}}")
# A token's name (an endpoint principal, a device sender) or a device id: printable text, then checked
# by _plain (a name: no 13-digit run, so no NIR typed in the wrong place) or _device (below).
_NAME = re.compile(r".{1,200}", re.DOTALL)
# A NIR/INS is 13 digits plus a 2-digit key; an IPP is often 8 to 10 digits. No id we record has 13.
_NIR_SHAPED = re.compile(r"\d{13}")
_TARGETS = {
    AuditAction.OPPOSITION_ADD: (_OPPOSITION_KEY, "a control.opposition keyed hash (<key_id>:<base32>)"),
    AuditAction.OPPOSITION_REMOVE: (_OPPOSITION_KEY, "a control.opposition keyed hash (<key_id>:<base32>)"),
    AuditAction.TOPIC_READ: (_TOPIC, "a topic name"),
    AuditAction.CONFIG_LOADED: (_COMPONENT, "a component name (affluent run --list) or 'run'"),
    AuditAction.REDRIVE: (_SHA256, "a raw id (lowercase hex SHA-256)"),
    AuditAction.REPLAY: (_TOPIC, "a topic name"),
    AuditAction.KEY_ROTATION: (_RING, "a key ring (destination) name"),
    AuditAction.TOKEN_CREATED: (_NAME, "the token's name (principal or sender), 1 to 200 characters"),
    AuditAction.DEVICE_LINK: (_NAME, "a device id, 1 to 200 characters"),
    AuditAction.DEVICE_UNLINK: (_NAME, "a device id, 1 to 200 characters"),
}
# Targets that are free names rather than fixed shapes: each also passes _plain (printable, no NIR shape).
_NAMED = frozenset(
    {
        AuditAction.TOPIC_READ,
        AuditAction.CONFIG_LOADED,
        AuditAction.KEY_ROTATION,
        AuditAction.TOKEN_CREATED,
    }
)
# A device id is the hardware's own (an IMEI has 15 digits, an EUI-64 up to 16): a run of digits is no
# sign of a NIR there, so it is refused only when it is one — a 15-character NIR with a valid key
# anywhere in it, or 13 digits alone (a NIR without its key). Who typed a patient's IPP as the device id
# is refused by the command, which knows the patient (affluent/devices_cli.py).
_DEVICES = frozenset({AuditAction.DEVICE_LINK, AuditAction.DEVICE_UNLINK})
# Attributes of a fixed shape: (pattern, what it must be, longest accepted).
_SHAPED = {
    "settings_sha256": (_SHA256, "a lowercase hex SHA-256", 64),
    "key_id": (_KEY_ID, "a key id (letters, digits, '.', '_', '-')", 64),
    "key_ids": (_KEY_IDS, "<ring>:<key id> pairs separated by commas", 1200),
    "component": (_COMPONENT, "a component name", 40),
}


class InvalidAuditEntry(ValueError):
    """An entry that would carry something other than ids; the text names the field, never the value."""


def _plain(name: str, text: str, limit: int = 200) -> str:
    if not text or len(text) > limit or not text.isprintable():
        raise InvalidAuditEntry(f"{name} must be 1 to {limit} printable characters")
    if _NIR_SHAPED.search(text):
        raise InvalidAuditEntry(f"{name} holds a run of 13 digits (an INS/NIR shape): never recorded")
    return text


def _device(text: str) -> str:
    if not text.isprintable():
        raise InvalidAuditEntry("a device id must be printable characters")
    windows = (text[i : i + 15] for i in range(max(0, len(text) - 14)))
    if _NIR_SHAPED.fullmatch(text) or any(valid_matricule(w) for w in windows):
        raise InvalidAuditEntry("a device id holds an INS/NIR (a matricule with its key): never recorded")
    return text


def audit_entry(
    action: AuditAction,
    who: str,
    channel: AuditChannel,
    targets: Iterable[str] = (),
    outcome: AuditOutcome = AuditOutcome.OK,
    reason: AuditReason | None = None,
    attributes: Mapping[str, str] | None = None,
    at: datetime | None = None,
    entry_id: str | None = None,
) -> dict[str, Any]:
    """One ``fr.affluent.control.AuditEntry`` record, checked: ids only, closed vocabularies, a reason
    exactly when refused. Raises :class:`InvalidAuditEntry` otherwise."""
    action, channel, outcome = AuditAction(action), AuditChannel(channel), AuditOutcome(outcome)
    if reason is not None:
        reason = AuditReason(reason)
    if (outcome is AuditOutcome.REFUSED) != (reason is not None):
        raise InvalidAuditEntry("a refused entry needs a reason, an ok entry has none")
    pattern, shape = _TARGETS[action]
    checked: list[str] = []
    for target in targets:
        if not isinstance(target, str) or not pattern.fullmatch(target):
            raise InvalidAuditEntry(f"a target of {action.value} must be {shape}")
        if action in _NAMED:
            _plain("a target", target, 249)
        elif action in _DEVICES:
            _device(target)
        checked.append(target)
    if outcome is AuditOutcome.OK and not checked:
        raise InvalidAuditEntry(f"an ok {action.value} entry names at least one target")
    extra: dict[str, str] = {}
    for name, value in (attributes or {}).items():
        if name not in ATTRIBUTES:
            raise InvalidAuditEntry(f"attribute {name[:40]!r} is not one of {', '.join(sorted(ATTRIBUTES))}")
        if name in _SHAPED:
            form, what, limit = _SHAPED[name]
            if not isinstance(value, str) or not form.fullmatch(value):
                raise InvalidAuditEntry(f"{name} must be {what}")
            extra[name] = value if name == "settings_sha256" else _plain(f"attribute {name}", value, limit)
        else:
            extra[name] = _plain(f"attribute {name}", str(value))
    when = at if at is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise InvalidAuditEntry("at must carry its offset")
    return {
        "entry_id": entry_id or uuid.uuid4().hex,
        "at": when.astimezone(UTC),
        "who": _plain("who", who),
        "channel": channel.value,
        "action": action.value,
        "targets": checked,
        "outcome": outcome.value,
        "reason": reason.value if reason is not None else None,
        "attributes": extra,
    }


def key_ids(current: Mapping[str, str]) -> tuple[str, list[str]]:
    """The ``key_ids`` attribute (``hdh:<id>,inca:<id>,…``, rings sorted) from ring → current key id, and
    the rings left out: a key id that is not an id the trail may hold (a 13-digit run), or past the
    attribute's length."""
    pairs: list[str] = []
    left_out: list[str] = []
    for ring, key_id in sorted(current.items()):
        pair = f"{ring}:{key_id}"
        fits = len(pairs) < 16 and len(",".join([*pairs, pair])) <= _SHAPED["key_ids"][2]
        if fits and _KEY_IDS.fullmatch(pair) and not _NIR_SHAPED.search(pair):
            pairs.append(pair)
        else:
            left_out.append(ring)
    return ",".join(pairs), left_out


def is_identified(topic: str) -> bool:
    """Whether reading ``topic`` reads identified patient data, and so is audited.

    Every topic is, except the national ones (pseudonymized, the platforms' own feed) and the audit
    trail itself (ids only; auditing its reads would make every ``audit list`` an entry). That covers
    ``ingest.*`` (raw messages), ``canonical.*`` (IPP, INS, names), ``dlq.*`` (raw payloads) and
    ``control.*`` (``control.devices`` links devices to patients); an unknown name counts as identified.
    """
    return not topic.startswith(NATIONAL_PREFIX) and topic != CONTROL_AUDIT


def _canonical(value: Any) -> Any:
    if isinstance(value, SecretStr):
        # Hashed, not dropped: changing a password changes the configuration's hash; the value never shows.
        return "sha256:" + hashlib.sha256(value.get_secret_value().encode("utf-8")).hexdigest()
    if isinstance(value, BaseModel):
        return {name: _canonical(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_canonical(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, Path | datetime | date):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def settings_digest(settings: BaseModel) -> str:
    """SHA-256 (hex) of the effective settings in canonical JSON, secrets replaced by their own SHA-256.

    Two starts with the same digest ran with the same configuration; the digest reveals no value."""
    text = json.dumps(_canonical(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as JSON-ready data (``at`` in ISO 8601, UTC)."""
    at = entry["at"]
    return {**entry, "at": at.astimezone(UTC).isoformat() if isinstance(at, datetime) else at}


def selected(
    entry: Mapping[str, Any],
    since: datetime | None = None,
    until: datetime | None = None,
    action: AuditAction | None = None,
) -> bool:
    """``since`` ≤ at < ``until``, and of ``action`` when given."""
    at = entry["at"]
    if since is not None and at < since:
        return False
    if until is not None and at >= until:
        return False
    return action is None or entry["action"] == AuditAction(action).value
