"""What every door asks about a hostile network, answered once.

Each door used to build its own TLS context and read the client certificate its own way (the MLLP door
kept the last common name, the FHIR door the first), so one certificate could name two different senders
depending on where it was presented. And nothing stopped a door from listening on every interface in
clear text. The answers now live here, and every door asks them:

- :func:`is_loopback` — only 127.0.0.0/8, ::1 and ``localhost`` are private to the machine; the wildcard
  addresses (0.0.0.0, ::, empty) listen on every interface, so they are *not* loopback;
- :func:`refuse_unprotected` — a door beyond loopback without its protections does not start, unless the
  operator said so in its ``allow_plaintext`` setting, which is then logged as a warning at every start;
- :func:`server_context` — TLS 1.2 at least, the client certificate verified against the door's CA;
- :func:`subject_cn` — a certificate names its holder by exactly one common name (CN); a subject with
  several CNs names nobody, because two readers could pick two different ones;
- :func:`check_key_file` — a private key that other accounts can read has already leaked: refused.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from affluent.core.errors import ConfigError

log = logging.getLogger(__name__)

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


def is_loopback(host: str) -> bool:
    """Whether a listening (or broker) address stays on this machine. Names other than ``localhost``
    are not resolved: what a name points to can change after the check, an address cannot."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def refuse_unprotected(
    door: str, host: str, missing: Sequence[str], *, allow_plaintext: bool, allow_setting: str
) -> None:
    """Stop a door that would listen beyond loopback without ``missing``, in one sentence naming the
    settings; with ``allow_plaintext`` it starts, and the risk it runs is in its log at every start."""
    if not missing or is_loopback(host):
        return
    lacking = "; ".join(missing)
    if allow_plaintext:
        log.warning(
            "%s listens on %s beyond loopback without %s (%s=true)", door, host, lacking, allow_setting
        )
        return
    raise ConfigError(
        f"{door} would listen on {host or 'every interface'} beyond loopback without {lacking}: "
        f"configure them, or set {allow_setting}=true to accept the risk"
    )


def refuse_clear_http(
    door: str, prefix: str, host: str, certificate: Path | None, key: Path | None, allow_plaintext: bool
) -> None:
    """The rule for a door speaking HTTP (FHIR REST, devices, opposition): it authenticates its callers
    itself, so from the network it needs TLS only. ``prefix`` names its settings (``AFFLUENT_FHIR_REST``)."""
    if key is not None:
        check_key_file(key, f"{prefix}__TLS_KEY")
    refuse_unprotected(
        door,
        host,
        [] if certificate else [f"TLS ({prefix}__TLS_CERTIFICATE, {prefix}__TLS_KEY)"],
        allow_plaintext=allow_plaintext,
        allow_setting=f"{prefix}__ALLOW_PLAINTEXT",
    )


def check_key_file(path: Path, setting: str) -> None:
    """Refuse a private key file that another account may read (or anyone may change).

    The owner alone may read it — with one exception, PostgreSQL's: a root-owned file that only its
    group may also read, for a process that is not root. That is how Kubernetes hands a Secret to a
    non-root pod (``fsGroup`` adds group read) and how Debian's ``ssl-cert`` group works; the group is
    then the service's own. Texts name the setting and the mode, never the content.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{setting}: the key file cannot be read ({type(exc).__name__})") from None
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    group_read_only = not mode & 0o037
    if group_read_only and info.st_uid == 0 and os.geteuid() != 0:
        return
    raise ConfigError(
        f"{setting} names a key file that other accounts may read (mode {mode:04o}): "
        "make it readable by its owner only (chmod 600)"
    )


def server_context(
    certificate: Path,
    key: Path,
    *,
    key_setting: str,
    client_ca: Path | None = None,
    require_client_certificate: bool = False,
) -> ssl.SSLContext:
    """A door's TLS server context. With ``client_ca``, client certificates are verified against it and,
    with ``require_client_certificate``, a client without one is refused during the handshake."""
    check_key_file(key, key_setting)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_TLS
    try:
        context.load_cert_chain(str(certificate), str(key))
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{key_setting}: the certificate, key or client CA cannot be loaded ({type(exc).__name__})"
        ) from None
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def subject_cn(peercert: Mapping[str, Any] | None) -> str | None:
    """The one common name of a verified peer certificate (``getpeercert()``), or None.

    None when there is no certificate, no CN, or more than one CN: the first and the last CN of such a
    subject are different identities, and a CA that signs one for a sender cannot be trusted to have
    checked both. Refusing the identity (the door then falls back to its other credentials, or refuses)
    is the only reading that no ordering convention can turn into somebody else's identity.
    """
    if not peercert:
        return None
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return str(names[0]) if len(names) == 1 else None
