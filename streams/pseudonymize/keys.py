"""Where pseudonymization keys come from, and how they are kept out of every text (design §6, §8).

A national pseudonym is only as safe as its key: anyone holding the key of a destination can recompute
every pseudonym of that destination from a NIR, and the NIR space is small enough to enumerate. So keys
never live in the repository (only obviously fake test keys do), never appear in ``repr``/``str``/
exception texts, and a feed refuses to start without one rather than fall back to something weaker.

Providers implement :class:`KeyProvider`; a file and an environment provider ship here, and a KMS or
Vault provider only has to answer the same three questions. Keys carry an id so they can rotate:
pseudonyms are prefixed with the id of the key that made them, and an old key stays resolvable by id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from affluent.core.errors import ConfigError

ENV_PREFIX = "AFFLUENT_PSEUDO_KEY__"
MIN_SECRET_BYTES = 32  # HMAC-SHA-256 gains nothing above 32 bytes and loses strength below
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DESTINATION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_BLOCK = 64  # SHA-256 block size


class KeyConfigError(ConfigError):
    """A key is missing, malformed or ambiguous. Texts name destinations and key ids, never secrets."""


class Key:
    """One HMAC-SHA-256 key of one destination.

    The inner and outer hash states of HMAC are computed once here: every pseudonym would otherwise
    repeat that work, and it is about a third of the cost of a pseudonym on the hot path. The states are
    as secret as the secret itself, so neither appears in ``repr``.
    """

    __slots__ = ("_inner", "_outer", "_secret", "destination", "key_id", "memo")

    def __init__(self, key_id: str, secret: bytes, destination: str = "") -> None:
        if not _KEY_ID.fullmatch(key_id):
            raise KeyConfigError(
                f"key id for destination {destination or '?'} must be 1-64 characters "
                "of letters, digits, '.', '_' or '-' (it prefixes every pseudonym)"
            )
        if len(secret) < MIN_SECRET_BYTES:
            raise KeyConfigError(
                f"key {key_id} for destination {destination or '?'} is shorter than {MIN_SECRET_BYTES} bytes"
            )
        self.key_id = key_id
        self.destination = destination
        self._secret = bytes(secret)
        block = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
        block = block.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # Pseudonyms this key made for recurring identifiers (patients, visits): a dict lookup instead of
        # an HMAC. Kept on the key itself so two keys can never share an entry.
        self.memo: dict[tuple[str, str], str] = {}

    @property
    def secret(self) -> bytes:
        return self._secret

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA-256 (RFC 2104) of ``message``; equal to ``hmac.digest(secret, message, 'sha256')``."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def __repr__(self) -> str:
        return f"Key(destination={self.destination!r}, key_id={self.key_id!r}, secret=<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Key)
            and other.key_id == self.key_id
            and other.destination == self.destination
            and other._secret == self._secret
        )

    def __hash__(self) -> int:
        return hash((self.destination, self.key_id))

    def __reduce__(self) -> Any:
        # A pickled key would be a secret written somewhere nobody audits; refuse rather than redact.
        raise TypeError("pseudonymization keys cannot be pickled")


class KeyProvider(Protocol):
    """What a feed asks of a key store. ``current`` is the key new pseudonyms are made with; ``by_id``
    resolves any key still kept (rotation); ``all`` lists them, current first, for lookups that must
    match values written under an older key (the opposition registry)."""

    def current(self, destination: str) -> Key: ...

    def by_id(self, destination: str, key_id: str) -> Key: ...

    def all(self, destination: str) -> tuple[Key, ...]: ...


class StaticKeyProvider:
    """Keys held in memory, current first. The file and environment providers build one of these."""

    def __init__(self, keys: Mapping[str, Iterable[Key]], origin: str = "keys") -> None:
        self._origin = origin
        self._keys: dict[str, tuple[Key, ...]] = {}
        for destination, items in keys.items():
            ring = tuple(items)
            ids = [k.key_id for k in ring]
            if len(set(ids)) != len(ids):
                raise KeyConfigError(f"{origin}: destination {destination} lists a key id twice")
            self._keys[destination] = ring

    def current(self, destination: str) -> Key:
        ring = self._keys.get(destination)
        if not ring:
            raise KeyConfigError(f"{self._origin}: no pseudonymization key for destination {destination}")
        return ring[0]

    def by_id(self, destination: str, key_id: str) -> Key:
        for key in self._keys.get(destination, ()):
            if key.key_id == key_id:
                return key
        raise KeyConfigError(f"{self._origin}: destination {destination} has no key with id {key_id}")

    def all(self, destination: str) -> tuple[Key, ...]:
        ring = self._keys.get(destination)
        if not ring:
            raise KeyConfigError(f"{self._origin}: no pseudonymization key for destination {destination}")
        return ring

    def destinations(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __repr__(self) -> str:
        listed = ", ".join(f"{d}: {[k.key_id for k in ring]}" for d, ring in self._keys.items())
        return f"{type(self).__name__}({self._origin}; {listed})"


class FirstOf:
    """Ask providers in order; the first that knows the destination answers (e.g. environment over file).

    A destination is answered by one provider only, never merged across them, so an operator who sets
    a key in the environment knows that is the key in use.
    """

    def __init__(self, *providers: KeyProvider) -> None:
        self._providers = providers
        # Providers hold their keys in memory from start-up on, so the answer per destination is fixed:
        # found once, not by raising through the providers for every record.
        self._chosen: dict[str, KeyProvider] = {}

    def _provider_for(self, destination: str) -> KeyProvider:
        chosen = self._chosen.get(destination)
        if chosen is not None:
            return chosen
        for provider in self._providers:
            try:
                provider.current(destination)
            except KeyConfigError:
                continue
            self._chosen[destination] = provider
            return provider
        raise KeyConfigError(f"no pseudonymization key for destination {destination} in any key provider")

    def current(self, destination: str) -> Key:
        return self._provider_for(destination).current(destination)

    def by_id(self, destination: str, key_id: str) -> Key:
        return self._provider_for(destination).by_id(destination, key_id)

    def all(self, destination: str) -> tuple[Key, ...]:
        return self._provider_for(destination).all(destination)


def _decode_secret(text: Any, destination: str, key_id: str, origin: str) -> bytes:
    if not isinstance(text, str):
        raise KeyConfigError(
            f"{origin}: key {key_id} of destination {destination}: secret must be base64 text"
        )
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(
            f"{origin}: key {key_id} of destination {destination}: secret is not valid base64"
        ) from None


def _check_destination(destination: Any, origin: str) -> str:
    if not isinstance(destination, str) or not _DESTINATION.fullmatch(destination):
        raise KeyConfigError(f"{origin}: destination names are lowercase letters, digits and '_'")
    return destination


def file_provider(path: str | Path) -> StaticKeyProvider:
    """Keys from a JSON file: ``{"<destination>": [{"key_id", "secret" (base64), "active"}, …]}``.

    Exactly one key per destination is active: it makes new pseudonyms; the others stay resolvable by
    id so what was published under them can still be matched. Keys whose name starts with ``_`` are
    comments. The file's content never reaches an error text.
    """
    origin = f"key file {Path(path).name}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyConfigError(f"{origin}: cannot be read ({type(exc).__name__})") from None
    except ValueError:
        raise KeyConfigError(f"{origin}: is not valid JSON") from None
    if not isinstance(data, dict):
        raise KeyConfigError(f"{origin}: must map destinations to lists of keys")
    rings: dict[str, list[Key]] = {}
    for destination, entries in data.items():
        if str(destination).startswith("_"):
            continue
        destination = _check_destination(destination, origin)
        if not isinstance(entries, list) or not entries:
            raise KeyConfigError(f"{origin}: destination {destination} must list at least one key")
        active: list[Key] = []
        retired: list[Key] = []
        for n, entry in enumerate(entries, 1):
            if not isinstance(entry, dict) or not isinstance(entry.get("key_id"), str):
                raise KeyConfigError(f"{origin}: destination {destination}, key #{n} has no key_id")
            unknown = set(entry) - {"key_id", "secret", "active", "comment"}
            if unknown:
                raise KeyConfigError(
                    f"{origin}: destination {destination}, key {entry['key_id']}: "
                    f"unknown entries {sorted(unknown)}"
                )
            key_id = entry["key_id"]
            secret = _decode_secret(entry.get("secret"), destination, key_id, origin)
            key = Key(key_id, secret, destination)
            is_active = entry.get("active", False)
            if not isinstance(is_active, bool):
                raise KeyConfigError(
                    f"{origin}: destination {destination}, key {key_id}: active must be true/false"
                )
            (active if is_active else retired).append(key)
        if len(active) != 1:
            raise KeyConfigError(
                f"{origin}: destination {destination} must have exactly one active key, has {len(active)}"
            )
        rings[destination] = active + retired
    return StaticKeyProvider(rings, origin)


def env_provider(environ: Mapping[str, str] | None = None) -> StaticKeyProvider:
    """Keys from ``AFFLUENT_PSEUDO_KEY__<DEST>=<key_id>:<base64>[,<old_id>:<base64>…]``, current first.

    ``<DEST>`` is the destination upper-cased (destination names are ``[a-z][a-z0-9_]*`` so that this
    mapping is exact). This is the door for container secrets and orchestrators that inject variables.
    """
    environ = os.environ if environ is None else environ
    rings: dict[str, list[Key]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        destination = _check_destination(name[len(ENV_PREFIX) :].lower(), "environment")
        origin = f"environment variable {name}"
        ring: list[Key] = []
        for n, item in enumerate(value.split(","), 1):
            key_id, sep, secret_text = item.strip().partition(":")
            if not sep or not key_id:
                raise KeyConfigError(f"{origin}: entry #{n} is not <key_id>:<base64 secret>")
            ring.append(Key(key_id, _decode_secret(secret_text, destination, key_id, origin), destination))
        rings[destination] = ring
    return StaticKeyProvider(rings, "environment")


def require_key(keys: KeyProvider, destination: str) -> Key:
    """The current key of a destination, or an error that says which destination lacks one.

    Called when a feed is built, so a missing key stops the worker at start-up instead of at the first
    record, and nothing is ever published with a weaker substitute.
    """
    try:
        return keys.current(destination)
    except KeyConfigError as exc:
        raise KeyConfigError(f"cannot build the national feed for destination {destination}: {exc}") from None


class PinnedKey:
    """A provider whose current key for one destination is a given (older) key of its ring.

    For records that must be computed under every key still kept, such as the retraction an objection
    emits: what was published under a retired key carries pseudonyms of that key, and the platform can
    only delete it if the retraction names the same pseudonym.
    """

    def __init__(self, keys: KeyProvider, destination: str, key: Key) -> None:
        self._keys, self._destination, self._key = keys, destination, key

    def current(self, destination: str) -> Key:
        return self._key if destination == self._destination else self._keys.current(destination)

    def by_id(self, destination: str, key_id: str) -> Key:
        return self._keys.by_id(destination, key_id)

    def all(self, destination: str) -> tuple[Key, ...]:
        return self._keys.all(destination)
