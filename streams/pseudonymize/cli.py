"""Command-line entry points of the pseudonymize stage, for ``affluent/cli.py`` to wire in.

- ``run_worker(settings)``: the faust worker (``affluent pseudonymize``);
- ``opposition_add`` / ``opposition_remove`` / ``opposition_list``: kept for callers of this module; they
  go through the opposition service (streams/opposition), like ``affluent opposition …``.

``main()`` runs the worker with settings from the environment (``python -c "from
streams.pseudonymize.cli import main; main()"``), as the integration tests do.
"""

from __future__ import annotations

import logging
import os
import sys

from affluent.errors import AffluentError
from affluent.settings import Settings, load_settings
from streams.opposition.cli import count, register, withdraw
from streams.opposition.objection import Objection, registry_entries
from streams.pseudonymize.keys import KeyProvider


def run_worker(settings: Settings) -> None:
    from streams.pseudonymize.worker import run

    sys.argv = [sys.argv[0]]  # faust's Worker reads its own command line; ours is consumed
    run(settings)


def opposition_entries(
    keys: KeyProvider, ins: str | None = None, ipp: str | None = None, authority: str | None = None
) -> tuple[str, ...]:
    """The registry keys for an objection given by INS (NIR matricule) and/or IPP with its authority."""
    return tuple(registry_entries(keys, Objection(ins=ins, ipp=ipp, authority=authority)))


def opposition_add(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Register an objection (registry entries, then national retractions); returns the entries written."""
    return register(settings, Objection(ins=ins, ipp=ipp, authority=authority), keys).entries


def opposition_remove(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Withdraw an objection: the patient's *new* events flow again (what was retracted stays retracted)."""
    return withdraw(settings, Objection(ins=ins, ipp=ipp, authority=authority), keys)


def opposition_list(settings: Settings) -> int:
    return count(settings)


def main() -> None:
    """Run the pseudonymize worker (settings and keys from the environment)."""
    logging.basicConfig(
        level=os.environ.get("AFFLUENT_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_worker(load_settings())
    except AffluentError as exc:
        sys.stderr.write(f"affluent: error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
