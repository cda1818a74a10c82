"""``affluent keys list`` and ``affluent keys rotate``: the pseudonymization key rings, by id only.

Keys come from ``AFFLUENT_PSEUDO_KEY__<RING>`` variables over the file named by
``AFFLUENT_PSEUDO_KEY_FILE``, as the pseudonymize worker loads them (``streams/pseudonymize/worker.py``
``load_keys``: the environment answers for a ring it knows, the file for the others). Neither command
ever prints, logs or records a secret.

``rotate`` adds a new random key to one ring of the key file as its current (``active``) key and keeps
every older key, inactive: what was published under them must still be matched (``all()`` is asked by
the opposition registry's ``withheld`` and by an objection's retractions, one per kept key). The new file
is written beside the old one, owner-only as the loader requires (``check_key_file``), and swapped in
with one rename — after the ``key_rotation`` entry (who, the ring, the new key id) is confirmed by Kafka:
no entry, no change. Running processes keep the keys they started with (see docs/operations.md).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from affluent.audit_cli import checked_entry
from affluent.core.errors import ConfigError
from affluent.core.settings import Settings
from affluent.core.tls import check_key_file
from schemas.audit import AuditAction
from schemas.audit_log import record_now
from streams.pseudonymize.keys import (
    ENV_PREFIX,
    MIN_SECRET_BYTES,
    Key,
    KeyConfigError,
    StaticKeyProvider,
    env_provider,
    file_provider,
)
from streams.pseudonymize.worker import KEY_FILE_ENV

# The hint every refusal ends with when the keys are not in a file this command may rewrite.
_BY_HAND = (
    "put <new key id>:<base64 of 32 random bytes, e.g. openssl rand -base64 32> first in the variable, "
    "keep the older keys after it (comma-separated), then restart the pseudonymize workers and the "
    "opposition endpoint"
)


@dataclass(frozen=True, slots=True)
class Ring:
    """One ring as a process would load it: its key ids, current first, and where they come from."""

    name: str
    key_ids: tuple[str, ...]
    origin: str


def _environment(environ: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if environ is None else environ)


def _key_file(env: Mapping[str, str]) -> Path | None:
    value = env.get(KEY_FILE_ENV)
    return Path(value) if value else None


def rings(environ: Mapping[str, str] | None = None) -> list[Ring]:
    """Every ring the keys' sources hold, sorted by name; the environment answers for a ring it knows."""
    env = _environment(environ)
    found: dict[str, Ring] = {}
    key_file = _key_file(env)
    if key_file is not None:
        check_key_file(key_file, KEY_FILE_ENV)  # the loader's own refusal, before the file is read
        provider = file_provider(key_file)
        for name in provider.destinations():
            found[name] = Ring(name, _ids(provider, name), f"key file {key_file}")
    from_env = env_provider(env)
    for name in from_env.destinations():
        found[name] = Ring(name, _ids(from_env, name), f"environment variable {ENV_PREFIX}{name.upper()}")
    if not found:
        raise ConfigError(
            f"no pseudonymization keys: set {KEY_FILE_ENV} to a key file or {ENV_PREFIX}<RING> variables "
            "(see docs/pseudonymization.md, Keys)"
        )
    return [found[name] for name in sorted(found)]


def _ids(provider: StaticKeyProvider, ring: str) -> tuple[str, ...]:
    return tuple(key.key_id for key in provider.all(ring))


def list_cmd(
    as_json: bool, out: Callable[[str], None] = print, environ: Mapping[str, str] | None = None
) -> int:
    """One line per key: ring, key id, ``current`` or ``kept``, origin; returns how many rings."""
    found = rings(environ)
    for ring in found:
        for n, key_id in enumerate(ring.key_ids):
            state = "current" if n == 0 else "kept"
            if as_json:
                row = {"ring": ring.name, "key_id": key_id, "state": state, "origin": ring.origin}
                out(json.dumps(row, ensure_ascii=False))
            else:
                out(f"{ring.name:<14} {key_id:<40} {state:<8} {ring.origin}")
    return len(found)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the key file that is at ``path`` now: two rotations never interleave. A
    rotation that swapped the file while this one waited is seen (another inode) and waited on again."""
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                yield
                return
        finally:
            os.close(fd)  # closing releases the lock


def _new_key_id(ring: str, taken: set[str], wanted: str | None, now: datetime) -> str:
    if wanted is not None:
        if wanted in taken:
            raise ConfigError(
                f"--key-id {wanted}: ring {ring} already has a key with that id; choose another"
            )
        return wanted
    base = f"{ring}-{now:%Y-%m-%d}"  # dashes: no long digit run, so the audit trail may hold it
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}.{n}"
    return candidate


def _rotated(data: dict[str, Any], ring: str, key_id: str, secret: bytes) -> dict[str, Any]:
    """The file's content with ``key_id`` first and active in ``ring``, every older key kept, inactive,
    with its own fields (comments included); other rings and comment entries untouched."""
    entry = {"key_id": key_id, "secret": base64.b64encode(secret).decode("ascii"), "active": True}
    return {
        name: ([entry, *({**old, "active": False} for old in entries)] if name == ring else entries)
        for name, entries in data.items()
    }


def _write_beside(path: Path, text: str, like: os.stat_result) -> Path:
    """``text`` in a new file beside ``path``, created owner-only, then given the original's mode and
    owner (a mode the loader accepted), flushed to disk. Returns its path; the caller renames it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        if os.geteuid() == 0:
            os.fchown(fd, like.st_uid, like.st_gid)  # root rotating a service's file: still the service's
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.fchmod(fd, stat.S_IMODE(like.st_mode))
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Rotation:
    ring: str
    key_id: str
    kept: tuple[str, ...]
    path: Path


def rotate(
    settings: Settings,
    ring: str,
    key_id: str | None = None,
    who: str | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Rotation:
    """Make a new random key the current key of ``ring`` in the key file, keeping the older ones.

    Refused (ConfigError, one line, nothing changed) when the ring's keys come from the environment,
    when there is no key file or it does not hold the ring, when the file is one the loader would
    refuse. The ``key_rotation`` entry is confirmed by Kafka before the file is replaced: if it cannot
    be written (KafkaUnavailable, a registry error), the file is unchanged."""
    env = _environment(environ)
    variable = f"{ENV_PREFIX}{ring.upper()}"
    if variable in env:
        raise ConfigError(
            f"the keys of ring {ring} come from {variable}, not a file: rotate there: {_BY_HAND}"
        )
    key_file = _key_file(env)
    if key_file is None:
        if any(name.startswith(ENV_PREFIX) for name in env):
            raise ConfigError(
                f"the keys come from {ENV_PREFIX}<RING> variables, not a file: rotate there: {_BY_HAND}"
            )
        raise ConfigError(f"no key file to rotate: set {KEY_FILE_ENV} to the pseudonymization key file")
    path = Path(os.path.realpath(key_file))  # a symlinked key file stays a symlink to the new content
    check_key_file(path, KEY_FILE_ENV)
    with _locked(path):
        like = os.stat(path)
        current = file_provider(path)  # the loader's checks: a file it refuses is not rotated either
        if ring not in current.destinations():
            known = ", ".join(sorted(current.destinations()))
            raise ConfigError(f"key file {path.name} has no ring {ring} (it has: {known}); name one of them")
        kept = _ids(current, ring)
        new_id = _new_key_id(ring, set(kept), key_id, clock())
        secret = secrets.token_bytes(MIN_SECRET_BYTES)
        try:
            Key(new_id, secret, ring)  # the id rule every pseudonym's prefix follows
        except KeyConfigError as exc:
            raise ConfigError(f"--key-id: {exc}") from None
        entry = checked_entry(
            AuditAction.KEY_ROTATION, [ring], "the key id", attributes={"key_id": new_id}, who=who
        )
        data = json.loads(path.read_text(encoding="utf-8"))
        text = json.dumps(_rotated(data, ring, new_id, secret), indent=2, ensure_ascii=False) + "\n"
        tmp = _write_beside(path, text, like)
        try:
            check_key_file(tmp, KEY_FILE_ENV)
            if _ids(file_provider(tmp), ring) != (new_id, *kept):  # what the workers will load
                raise ConfigError(
                    f"the rotated key file for ring {ring} does not load as written; nothing changed"
                )
            record_now(settings, entry)  # before the swap: no entry, no change
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    return Rotation(ring, new_id, kept, path)
