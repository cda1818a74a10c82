"""Command-line entry points of the pseudonymize stage, for ``affluent/cli.py`` to wire in.

- ``run_worker(settings)``: the faust worker (``affluent pseudonymize``);
- ``opposition_add(settings, ins=…, ipp=…, authority=…)``: register an objection — only keyed hashes of
  the identity are written to ``control.opposition`` (``affluent opposition add``);
- ``opposition_list(settings)``: how many entries the registry holds (``affluent opposition list``).

``main()`` runs the worker with settings from the environment (``python -c "from
streams.pseudonymize.cli import main; main()"``), as the integration tests do.
"""

from __future__ import annotations

import logging
import os
import sys

from affluent.compacted import CompactedView
from affluent.errors import AffluentError, ConfigError, KafkaUnavailable
from affluent.kafka import TopicSpec, ensure_topics, make_producer, wait_for_kafka
from affluent.settings import Settings, load_settings
from affluent.topics import COMPACTED_CONFIG, CONTROL_OPPOSITION
from streams.pseudonymize.keys import KeyProvider
from streams.pseudonymize.pseudonym import IdentityMissing, ins_form, ipp_form, opposition_key

OPPOSED = b"1"


def run_worker(settings: Settings) -> None:
    from streams.pseudonymize.worker import run

    sys.argv = [sys.argv[0]]  # faust's Worker reads its own command line; ours is consumed
    run(settings)


def opposition_entries(
    keys: KeyProvider, ins: str | None = None, ipp: str | None = None, authority: str | None = None
) -> tuple[str, ...]:
    """The registry keys for an objection given by INS (NIR matricule) and/or IPP with its authority."""
    patient_ref: dict[str, object] = {
        "ins": {"matricule": ins} if ins else None,
        "ipp": {"id": ipp, "authority_oid": authority} if ipp else None,
    }
    forms: list[str] = []
    form = ins_form(patient_ref)
    if form is not None:
        forms.append(form)
    if ipp:
        if not authority:
            raise ConfigError("an IPP objection needs the IPP's assigning authority (OID or namespace)")
        try:
            forms.append(ipp_form(patient_ref))
        except IdentityMissing as exc:
            raise ConfigError(str(exc)) from None
    if not forms:
        raise ConfigError("an objection needs an INS matricule or an IPP with its authority")
    return tuple(opposition_key(keys, form) for form in forms)


def opposition_add(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Write the objection's keyed hashes to ``control.opposition`` (value ``b"1"``, acks=all); returns
    the number of entries written. Nothing identifying is printed or logged."""
    return _write_entries(settings, OPPOSED, ins, ipp, authority, keys)


def opposition_remove(
    settings: Settings,
    ins: str | None = None,
    ipp: str | None = None,
    authority: str | None = None,
    keys: KeyProvider | None = None,
) -> int:
    """Withdraw an objection: tombstones for its keyed hashes, so compaction forgets them and the
    patient's *new* events flow again (what was retracted stays retracted)."""
    return _write_entries(settings, None, ins, ipp, authority, keys)


def _write_entries(
    settings: Settings,
    value: bytes | None,
    ins: str | None,
    ipp: str | None,
    authority: str | None,
    keys: KeyProvider | None,
) -> int:
    from streams.pseudonymize.worker import load_keys

    keys = keys if keys is not None else load_keys()
    entries = opposition_entries(keys, ins=ins, ipp=ipp, authority=authority)
    wait_for_kafka(settings.kafka, 30)
    ensure_topics(settings.kafka, [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG)])
    producer = make_producer(settings.kafka, acks="all")
    failures: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(type(err).__name__)

    for entry in entries:
        producer.produce(CONTROL_OPPOSITION, key=entry.encode("utf-8"), value=value, on_delivery=report)
    remaining = producer.flush(30)
    if remaining or failures:
        raise KafkaUnavailable(
            f"opposition change not confirmed by Kafka ({remaining} pending, {len(failures)} failed)"
        )
    return len(entries)


def opposition_list(settings: Settings) -> int:
    """The number of entries in the opposition registry (keyed hashes; two per patient usually)."""
    wait_for_kafka(settings.kafka, 30)
    ensure_topics(settings.kafka, [TopicSpec(CONTROL_OPPOSITION, config=COMPACTED_CONFIG)])
    view = CompactedView(settings.kafka, CONTROL_OPPOSITION, name="opposition-list")
    view.start()
    try:
        return len(view)
    finally:
        view.stop()


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
