"""What ``affluent run`` can start: one row per door or stream worker.

A component is an ``affluent`` sub-command run as its own process (a stream worker is a blocking
consume loop, and one process per component is also how a region scales out: run more of the
same row elsewhere). The table is declarative so that a new door is one line here; its settings
(ports, topics, keys) still come from the environment and settings files every process reads.

``role`` orders the shutdown: doors stop first (stop accepting, drain, flush), so that nothing is
acknowledged to a sender after the workers that carry it further have gone; workers stop last and
commit what they have finished.

``check`` is the door's own start-up refusal (listening beyond loopback unprotected, a key file others
can read); :func:`start_checks` adds what any process of the row would fail on at once — a file its
settings name that is not there, a port it listens on that is taken — and both run in the supervisor
(and in the component's own sub-command) before anything starts: one sentence and a non-zero exit, instead
of a child that fails and is restarted forever. ``needs_keys`` marks the components that hold
pseudonymization keys: no other child receives them.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from affluent.core.errors import ConfigError
from affluent.core.settings import Settings

Role = Literal["door", "worker"]


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    argv: tuple[str, ...]  # after ``affluent``
    role: Role
    # The port of the child's /metrics /health /ready server (None: no probe, alive = ready).
    metrics_port: Callable[[Settings], int | None]
    default: bool = True
    check: Callable[[Settings], None] | None = None
    needs_keys: bool = False
    # The Settings section of a door (host, port, metrics_port, the files it names); None for a worker.
    section: str | None = None


def check_files(section: BaseModel, setting: str) -> None:
    """Every file a door's settings name (certificates, keys, CAs, a JWKS, a templates folder) is there
    and readable, or one sentence names the setting and the path — before a TLS library says only
    "No such file or directory" about one of three files."""
    for field, value in section:
        name = f"{setting}__{field.upper()}"
        if isinstance(value, BaseModel):
            check_files(value, name)
        if not isinstance(value, Path):
            continue
        folder = field.endswith("_dir")
        if not value.exists():
            raise ConfigError(f"{name} names {value}, which does not exist: give the right path, or unset it")
        if folder != value.is_dir():
            kind = "a folder" if folder else "a file"
            raise ConfigError(f"{name} names {value}, which is not {kind}: give the path of {kind}")
        if not folder:
            try:
                value.open("rb").close()
            except OSError as exc:
                raise ConfigError(
                    f"{name} names {value}, which cannot be read ({type(exc).__name__})"
                ) from None


def check_ports(listeners: Sequence[tuple[str, int | None]]) -> None:
    """Each (host, port) is free to listen on now, or the OSError a bind would raise (``affluent/cli.py``
    names the setting), before the process waits for Kafka and registers schemas for nothing."""
    for host, port in listeners:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            socket.create_server((host, port), family=family).close()
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise OSError(
                    exc.errno, f"error while attempting to bind on address ('{host}', {port}): {exc.strerror}"
                ) from None  # anything else (a name that does not resolve): the real bind will say it


def listeners(component: Component, settings: Settings) -> list[tuple[str, int | None]]:
    """Where a component's process listens: a door's port and /metrics port, a worker's /metrics port."""
    if component.section is None:
        return [(settings.streams.metrics_host, component.metrics_port(settings))]
    door = getattr(settings, component.section)
    return [(door.host, door.port), (door.host, getattr(door, "metrics_port", None))]


def start_checks(component: Component, settings: Settings) -> None:
    """Everything a component's process would refuse at once: its files, its ports, then its own check."""
    if component.section is not None:
        check_files(getattr(settings, component.section), f"AFFLUENT_{component.section.upper()}")
    check_ports(listeners(component, settings))
    if component.check is not None:
        component.check(settings)


def _check_mllp(settings: Settings) -> None:
    from connectors.mllp.service import check_exposure

    check_exposure(settings.mllp)


def _check_fhir(settings: Settings) -> None:
    from connectors.fhir_rest.service import check_exposure

    check_exposure(settings.fhir_rest)


def _check_devices(settings: Settings) -> None:
    from connectors.devices.service import check_exposure

    check_exposure(settings.devices)


def _check_opposition(settings: Settings) -> None:
    from streams.opposition.http import check_exposure

    check_exposure(settings.opposition)


COMPONENTS: tuple[Component, ...] = (
    Component("mllp", ("mllp",), "door", lambda s: s.mllp.metrics_port, check=_check_mllp, section="mllp"),
    Component("normalize", ("normalize",), "worker", lambda s: s.streams.metrics_port),
    Component(
        "pseudonymize",
        ("pseudonymize",),
        "worker",
        lambda s: s.streams.pseudonymize_metrics_port,
        needs_keys=True,
    ),
    # The cohort stage (Faust): INCa's records pass through it (cohort.inca.*) before pseudonymize.
    Component("cohort", ("cohort",), "worker", lambda s: s.streams.cohort_metrics_port),
    Component(
        "fhir", ("fhir",), "door", lambda s: s.fhir_rest.metrics_port, check=_check_fhir, section="fhir_rest"
    ),
    Component(
        "devices",
        ("devices", "serve"),
        "door",
        lambda s: s.devices.metrics_port,
        check=_check_devices,
        section="devices",
    ),
    # Needs bearer tokens configured (AFFLUENT_OPPOSITION__TOKENS): started only when asked for.
    Component(
        "opposition",
        ("opposition", "serve"),
        "door",
        lambda s: s.opposition.port,
        default=False,
        check=_check_opposition,
        needs_keys=True,
        section="opposition",
    ),
)
# The FHIR puller needs the name of its source: run ``affluent pull <source> --follow`` per source.


def select(only: Sequence[str] | None, table: Sequence[Component] = COMPONENTS) -> list[Component]:
    """The components to run: the named ones (any, enabled by default or not) or the default ones."""
    if not only:
        return [c for c in table if c.default]
    known = {c.name: c for c in table}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [c for c in table if c.name in set(only)]
