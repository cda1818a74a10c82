"""The roof's side of the audit trail: who is at the console, the configuration a process starts with,
and ``affluent audit list``.

Entries are built by :mod:`schemas.audit` (ids only) and written by :mod:`schemas.audit_log`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from affluent import __version__
from affluent.core.errors import AffluentError, ConfigError
from affluent.core.settings import Settings
from schemas.audit import (
    AuditAction,
    AuditChannel,
    AuditOutcome,
    AuditReason,
    InvalidAuditEntry,
    audit_entry,
    entry_json,
    key_ids,
    settings_digest,
)
from schemas.audit_log import read_entries, record_now

log = logging.getLogger(__name__)


def os_user() -> str:
    """The OS account running the command (``getpass.getuser``), ``uid:<n>`` when it has no name."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def start_key_ids(current: Mapping[str, str]) -> dict[str, str]:
    """The ``key_ids`` attribute of a start from ring → current key id (none when empty). A key id the
    trail would refuse (one holding a 13-digit run) is left out and logged rather than stopping the
    start: the entry is best effort, the worker is not."""
    value, left_out = key_ids(current)
    for ring in left_out:
        log.info("the current key id of ring %s is not recorded at start: not an id the trail may hold", ring)
    return {"key_ids": value} if value else {}


def _quick(settings: Settings) -> Settings:
    """Settings for a best-effort entry: Kafka gets 3 s, not the clinical flow's delivery timeout."""
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"delivery_timeout_ms": 3_000})}
    )


def record_start(
    settings: Settings,
    target: str,
    components: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> str | None:
    """``config_loaded``: the SHA-256 of the effective settings (secrets hashed), never a value; ``extra``
    adds attributes of the closed list (a pseudonymize worker's current ``key_ids``).

    Best effort: a component starts even when the entry cannot be written (Kafka or the registry away
    at that moment; logged at INFO, since the component then says so itself in its one error line or
    waits for them); the clinical flow does not wait for the trail. Returns the digest when written."""
    digest = settings_digest(settings)
    entry = audit_entry(
        AuditAction.CONFIG_LOADED,
        os_user(),
        AuditChannel.PROCESS,
        [target],
        attributes={
            "settings_sha256": digest,
            "components": ",".join(components),
            "host": socket.gethostname()[:200],
            "pid": str(os.getpid()),
            "version": __version__,
            **(extra or {}),
        },
    )
    try:
        record_now(_quick(settings), entry, wait_s=3.0)
    except AffluentError as exc:
        log.info("audit entry for the configuration not written (%s); starting anyway", exc)
        return None
    return digest


def checked_entry(
    action: AuditAction,
    targets: Sequence[str],
    what: str,
    outcome: AuditOutcome = AuditOutcome.OK,
    reason: AuditReason | None = None,
    attributes: Mapping[str, str] | None = None,
    who: str | None = None,
) -> dict[str, Any]:
    """An entry for a command's own action, by the OS user on the command line. An argument the trail
    cannot hold (a name with a 13-digit run, a control character) is a mistake of the caller: one line
    naming ``what`` (``the device id``, ``--sender``), exit 2, and nothing done."""
    try:
        return audit_entry(
            action, who or os_user(), AuditChannel.CLI, targets, outcome, reason, attributes=attributes
        )
    except InvalidAuditEntry as exc:
        raise ConfigError(
            f"{what} cannot be recorded in the audit trail ({exc}): the trail holds ids only, never "
            "anything shaped like an INS; use another id"
        ) from None


def record_token(
    settings: Settings,
    name: str,
    component: str,
    what: str,
    who: str | None = None,
    best_effort: bool = False,
) -> str | None:
    """``token_created``: the token's name and the component that will check it, never the token or its
    hash; the caller shows the token only after this returns. A name the trail cannot hold is refused
    (ConfigError). The entry is confirmed by Kafka (else KafkaUnavailable or a registry error: show no
    token) — or, with ``best_effort``, tried for 3 s and, when it cannot be written, a one-line warning is
    returned for the command to print before the token. ``affluent opposition|devices token`` are best
    effort: their tokens are made while setting a deployment up, before Kafka may run (the compose set-up
    does), and are inert until their digest is configured, which changes that component's
    ``settings_sha256`` in its next ``config_loaded``. Returns None when written."""
    entry = checked_entry(
        AuditAction.TOKEN_CREATED, [name], what, attributes={"component": component}, who=who
    )
    if not best_effort:
        record_now(settings, entry)
        return None
    try:
        record_now(_quick(settings), entry, wait_s=3.0)
    except AffluentError as exc:
        return f"affluent: warning: this token is not in the audit trail ({' '.join(str(exc).split())})"
    return None


def record_refusal(settings: Settings, entry: dict[str, Any], wait_s: float = 3.0) -> None:
    """A ``refused`` entry after the fact, best effort (the command's own error is what the user sees)."""
    try:
        record_now(settings, entry, wait_s=wait_s)
    except AffluentError as exc:
        log.info("refused %s not written to the audit trail (%s)", entry["action"], exc)


def list_entries(
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    action: str | None,
    as_json: bool,
    out: Callable[[str], None] = print,
) -> int:
    """Print the selected entries, oldest first; returns how many."""
    entries = read_entries(settings, since, until, AuditAction(action) if action else None)
    for entry in entries:
        shown = entry_json(entry)
        if as_json:
            out(json.dumps(shown, ensure_ascii=False, sort_keys=True))
            continue
        outcome = shown["outcome"] + (f" ({shown['reason']})" if shown["reason"] else "")
        extra = " ".join(f"{k}={v}" for k, v in sorted(shown["attributes"].items()))
        out(
            f"{shown['at']}  {shown['action']:<17} {outcome:<26} {shown['channel']:<7} {shown['who']:<20} "
            f"{','.join(shown['targets'])}{'  ' + extra if extra else ''}"
        )
    return len(entries)
