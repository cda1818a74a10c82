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
from collections.abc import Callable, Sequence
from datetime import datetime

from affluent import __version__
from affluent.core.errors import AffluentError
from affluent.core.settings import Settings
from schemas.audit import AuditAction, AuditChannel, audit_entry, entry_json, settings_digest
from schemas.audit_log import read_entries, record_now

log = logging.getLogger(__name__)


def os_user() -> str:
    """The OS account running the command (``getpass.getuser``), ``uid:<n>`` when it has no name."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def record_start(settings: Settings, target: str, components: Sequence[str]) -> str | None:
    """``config_loaded``: the SHA-256 of the effective settings (secrets hashed), never a value.

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
        },
    )
    quick = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"delivery_timeout_ms": 3_000})}
    )
    try:
        record_now(quick, entry, wait_s=3.0)
    except AffluentError as exc:
        log.info("audit entry for the configuration not written (%s); starting anyway", exc)
        return None
    return digest


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
