"""What ``affluent run`` can start: one row per door or stream worker.

A component is an ``affluent`` sub-command run as its own process (a stream worker is a blocking
consume loop, and one process per component is also how a region scales out: run more of the
same row elsewhere). The table is declarative so that a new door is one line here; its settings
(ports, topics, keys) still come from the environment and settings files every process reads.

``role`` orders the shutdown: doors stop first (stop accepting, drain, flush), so that nothing is
acknowledged to a sender after the workers that carry it further have gone; workers stop last and
commit what they have finished.

``check`` is the door's own start-up refusal (listening beyond loopback unprotected, a key file others
can read), run by the supervisor before it starts anything: one sentence and a non-zero exit, instead
of a child that fails and is restarted forever. ``needs_keys`` marks the components that hold
pseudonymization keys: no other child receives them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
    Component("mllp", ("mllp",), "door", lambda s: s.mllp.metrics_port, check=_check_mllp),
    Component("normalize", ("normalize",), "worker", lambda s: s.streams.metrics_port),
    Component(
        "pseudonymize",
        ("pseudonymize",),
        "worker",
        lambda s: s.streams.pseudonymize_metrics_port,
        needs_keys=True,
    ),
    Component("fhir", ("fhir",), "door", lambda s: s.fhir_rest.metrics_port, check=_check_fhir),
    Component(
        "devices", ("devices", "serve"), "door", lambda s: s.devices.metrics_port, check=_check_devices
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
