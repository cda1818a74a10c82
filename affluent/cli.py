"""The ``affluent`` command.

Each sub-command is a thin shell over a library call. Every mistake is answered here, in one place
(:func:`main` through :func:`one_line`), as one line on stderr — ``affluent: error: <what>, <where>,
<what to do>`` — and an exit code: 2 (``EXIT_CONFIG``) for a wrong setting, argument or file, 3
(``EXIT_UNAVAILABLE``) for a dependency that is down. No traceback, unless ``--debug`` is given; an
error nobody foresaw (a bug) keeps its traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from affluent import __version__
from affluent.core.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    AffluentError,
    ConfigError,
    KafkaUnavailable,
    Unavailable,
)
from affluent.core.settings import Settings, describe_invalid, load_settings
from affluent.local.stack import LocalStack
from schemas.audit import AuditAction

if TYPE_CHECKING:
    from affluent.local.network import Network


def _stack(settings: Settings, args: argparse.Namespace) -> LocalStack:
    return LocalStack(settings.stack, brokers=getattr(args, "brokers", 1))


def cmd_stack_fetch(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    stack.fetch()
    print(f"Kafka {settings.stack.kafka_version}: {stack.kafka_home}")
    print(f"Apicurio Registry {settings.stack.registry_version}: {stack.registry_home}")
    return 0


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    stack.up(registry=not args.no_registry)
    print(
        f"Kafka ({stack.brokers} node{'s' if stack.brokers > 1 else ''}) ready at {stack.bootstrap_servers}"
    )
    if not args.no_registry:
        print(f"Schema registry (Confluent API) ready at {stack.registry_url}")
    print(f"Data and logs: {stack.state}")
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    stack.down(wipe=args.wipe)
    print("local stack stopped" + (" and its data wiped" if args.wipe else ""))
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    stack = _stack(settings, args)
    rows = stack.status()
    for row in rows:
        state = f"running (pid {row.pid})" if row.running else "stopped"
        print(f"{row.name:<16} {state:<22} {row.address:<42} log: {row.log}")
    return 0 if all(r.running for r in rows) else 3


def _network(settings: Settings, args: argparse.Namespace) -> Network:
    from affluent.local.network import NETWORK_FILE, Network, plan_topology

    clusters = getattr(args, "clusters", None)
    if (
        clusters is None
        and args.network_command == "up"
        and not (settings.network.state_dir / NETWORK_FILE).exists()
    ):
        clusters = "hospital,region,national"  # a first start; later ones reuse the recorded network
    topology = plan_topology(clusters.split(","), args.hospitals) if clusters else None
    return Network(settings.stack, settings.network, topology)


def cmd_network_up(settings: Settings, args: argparse.Namespace) -> int:
    network = _network(settings, args)
    network.up()
    for flow in network.topology.flows:
        print(f"{flow.source} -> {flow.target}: MirrorMaker 2 replicates national.*")
    for alias, stack in network.stacks.items():
        print(f"{alias:<10} Kafka {stack.bootstrap_servers:<17} registry {stack.registry_url}")
    for target in network.topology.targets:
        print(f"{target:<10} replication metrics {network.metrics_url(target)}")
    print(f"Data and logs: {network.state}")
    return 0


def cmd_network_down(settings: Settings, args: argparse.Namespace) -> int:
    _network(settings, args).down(wipe=args.wipe)
    print("network stopped" + (" and its data wiped" if args.wipe else ""))
    return 0


def cmd_network_status(settings: Settings, args: argparse.Namespace) -> int:
    rows = _network(settings, args).status()
    for row in rows:
        state = f"running (pid {row.pid})" if row.running else "stopped"
        print(f"{row.name:<28} {state:<22} {row.address}")
    return 0 if all(r.running for r in rows) else 3


def cmd_topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.core.kafka import ensure_topics
    from affluent.core.topics import CORE_TOPICS, audit_topic

    created = ensure_topics(settings.kafka, [*CORE_TOPICS, audit_topic(settings.audit.retention_ms)])
    print(f"{len(created)} topic(s) created" + (f": {', '.join(created)}" if created else ""))
    return 0


def cmd_schemas_register(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.catalog import register_all
    from schemas.registry import Registry

    for entry, schema_id in register_all(Registry(settings.registry)):
        print(f"{entry.subject:<42} id {schema_id:<5} {entry.compatibility}")
    return 0


def cmd_schemas_check(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.catalog import check_all
    from schemas.registry import Registry

    results = check_all(Registry(settings.registry))
    for result in results:
        print(f"{'ok ' if result.ok else 'BAD'} {result.entry.subject:<42} {result.detail}")
    bad = [r for r in results if not r.ok]
    if bad:
        print(f"{len(bad)} schema(s) would break their subject's compatibility", file=sys.stderr)
    return 1 if bad else 0


def _start_checks(settings: Settings, name: str, extra: dict[str, str] | None = None) -> None:
    """A component's start-up refusals (files, ports, exposure) before anything starts, as ``run`` does;
    then the configuration it starts with goes to the audit trail (its hash only, best effort), with
    ``extra`` attributes (the pseudonymize worker's current key ids)."""
    from affluent.audit_cli import record_start
    from affluent.components import COMPONENTS, start_checks

    for component in COMPONENTS:
        if component.name == name:
            start_checks(component, settings)
    record_start(settings, name, [name], extra)


def cmd_mllp(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from connectors.mllp.service import serve_forever

    if args.port is not None:
        settings = settings.model_copy(update={"mllp": settings.mllp.model_copy(update={"port": args.port})})
    _start_checks(settings, "mllp")
    asyncio.run(serve_forever(settings))
    return 0


def cmd_fhir(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from connectors.fhir_rest.service import serve_forever

    if args.port is not None:
        fhir = settings.fhir_rest.model_copy(update={"port": args.port})
        settings = settings.model_copy(update={"fhir_rest": fhir})
    _start_checks(settings, "fhir")
    asyncio.run(serve_forever(settings))
    return 0


def cmd_normalize(settings: Settings, args: argparse.Namespace) -> int:
    from streams.normalize.worker import run

    _start_checks(settings, "normalize")
    run(settings)
    return 0


def cmd_pseudonymize(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import start_key_ids
    from streams.pseudonymize.worker import current_key_ids, load_keys, run

    keys = load_keys()  # read once: the key ids its start records are the ones the worker runs with
    _start_checks(settings, "pseudonymize", start_key_ids(current_key_ids(keys)))
    run(settings, keys)
    return 0


def cmd_cohort(settings: Settings, args: argparse.Namespace) -> int:
    from streams.cohort.worker import run

    _start_checks(settings, "cohort")
    run(settings)
    return 0


def _objection(args: argparse.Namespace) -> Any:
    """From --ins/--ipp/--authority, or from a JSON object on stdin (--stdin), which keeps the identity
    out of the shell history and of the process list."""
    import json

    from streams.opposition.objection import InvalidObjection, Objection

    if args.stdin:
        try:
            body = json.loads(sys.stdin.read())
        except ValueError:
            raise InvalidObjection("stdin is not a JSON object") from None
        return Objection.from_json(body)
    return Objection(ins=args.ins, ipp=args.ipp, authority=args.authority)


def cmd_opposition_add(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import os_user
    from streams.opposition.cli import register

    done = register(settings, _objection(args), who=os_user())
    print(f"objection registered ({done.entries} entries, {done.retractions} national retractions)")
    return 0


def cmd_opposition_remove(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import os_user
    from streams.opposition.cli import withdraw

    n = withdraw(settings, _objection(args), who=os_user())
    print(f"objection withdrawn ({n} entries)")
    return 0


def cmd_opposition_list(settings: Settings, args: argparse.Namespace) -> int:
    from streams.opposition.cli import count

    print(f"{count(settings)} entries")
    return 0


def cmd_opposition_serve(settings: Settings, args: argparse.Namespace) -> int:
    from streams.opposition.cli import serve

    _start_checks(settings, "opposition")
    serve(settings)
    return 0


def cmd_opposition_token(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import record_token
    from affluent.core.auth import StaticTokens, new_token

    token, digest = new_token()
    StaticTokens({args.principal: digest}, origin="AFFLUENT_OPPOSITION__TOKENS")  # the endpoint's own check
    warning = record_token(settings, args.principal, "opposition", "the principal", best_effort=True)
    if warning:
        print(warning, file=sys.stderr)
    print(f"token (give it to {args.principal}, shown once): {token}")
    print(f"AFFLUENT_OPPOSITION__TOKENS={shlex.quote(json.dumps({args.principal: digest}))}")
    return 0


def cmd_risk_report(settings: Settings, args: argparse.Namespace) -> int:
    from streams.pseudonymize.cli import risk_report

    quasi = [q.strip() for q in args.quasi.split(",") if q.strip()] if args.quasi else None
    report = risk_report(settings, args.destination, args.k, quasi, args.since_hours)
    for line in report.lines(show_classes=args.show_classes):
        print(line)
    return 0 if report.patients_below_k == 0 or not args.fail_below_k else 1


def cmd_pull(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from connectors.fhir_poll import cli as pull

    source = pull.find_source(settings, args.source, args.sources)
    if args.reset:
        types = asyncio.run(pull.reset(settings, source, args.type or []))
        print(f"checkpoints of {source.name} forgotten for {', '.join(types)}: the next pass resyncs them")
    elif args.follow:
        from affluent.audit_cli import record_start

        record_start(settings, "pull", [f"pull:{source.name}"])
        asyncio.run(pull.follow(settings, source))
    else:
        print(pull.summary(asyncio.run(pull.pull_once(settings, source))))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.sim.demo import run_demo

    return run_demo(
        settings,
        out=lambda line: print(line, flush=True),
        duration_s=args.duration,
        rate=args.rate,
        keep_running=args.keep_running,
    )


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from affluent.components import COMPONENTS, select
    from affluent.run import supervise

    if args.list:
        for c in COMPONENTS:
            when = "default" if c.default else "on demand"
            print(f"{c.name:<14} {c.role:<7} {when:<10} affluent {' '.join(c.argv)}")
        return 0
    from affluent.audit_cli import record_start
    from affluent.run import preflight

    components = select(args.only)
    preflight(settings, components, os.environ)  # a refusal before the trail records a start
    record_start(settings, "run", [c.name for c in components])
    return asyncio.run(supervise(settings, components, out=lambda line: print(line, flush=True)))


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import os

    from affluent.sim.devices import DeviceTarget
    from affluent.sim.fhir import FhirTarget
    from affluent.sim.simulate import Plan, simulate_cli

    plan = Plan(
        patients=args.patients,
        rate=args.rate,
        duration_s=args.duration,
        senders=args.senders,
        host=args.host,
        port=args.port or settings.mllp.port,
        seed=args.seed,
        fhir=FhirTarget(args.fhir_url, os.environ.get("AFFLUENT_SIMULATE_FHIR_TOKEN", ""))
        if args.fhir_url
        else None,
        devices=DeviceTarget(
            args.devices_url,
            os.environ.get("AFFLUENT_SIMULATE_DEVICE_TOKEN", ""),
            mqtt_host=args.mqtt_host,
            mqtt_port=args.mqtt_port,
            topic_prefix=args.mqtt_prefix,
        )
        if args.devices_url or args.mqtt_port
        else None,
    )
    return asyncio.run(simulate_cli(settings, plan, out=lambda line: print(line, flush=True)))


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.tail import tail

    tail(
        settings,
        args.topic,
        from_beginning=args.from_beginning,
        limit=args.max,
        out=lambda line: print(line, flush=True),
        follow=args.follow or not args.from_beginning,
        wait_s=args.wait,
    )
    return 0


def cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from affluent import dlq

    dlq.list_cmd(
        settings,
        args.topic or dlq.DLQ_TOPICS,
        dlq.parse_time(args.since, "--since") if args.since else None,
        dlq.parse_time(args.until, "--until") if args.until else None,
        args.reason,
        args.facility,
        args.json,
    )
    return 0


def cmd_dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    from affluent import dlq

    since = dlq.parse_time(args.since, "--since") if args.since else None
    dlq.show_cmd(settings, args.raw_id, args.topic or dlq.DLQ_TOPICS, since)  # audited: identified data
    return 0


def cmd_audit_list(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import list_entries

    if args.since and args.until and args.until <= args.since:
        raise ConfigError("--until must be later than --since (affluent audit list)")
    list_entries(
        settings, args.since, args.until, args.action, args.json, out=lambda line: print(line, flush=True)
    )
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.keys_cli import list_cmd

    list_cmd(args.json, out=lambda line: print(line, flush=True))
    return 0


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.keys_cli import rotate
    from streams.pseudonymize.pseudonym import OPPOSITION_KEYRING

    done = rotate(settings, args.destination, args.key_id)  # audited before the file is replaced
    kept = ", ".join(done.kept)
    print(f"{done.ring}: {done.key_id} is now the current key (kept: {kept}), in {done.path}")
    print(
        "running pseudonymize workers and opposition endpoints keep the keys they started with: restart "
        "them (affluent_pseudonym_key_info then shows the new id)"
    )
    if done.ring == OPPOSITION_KEYRING:
        print(
            "opposition ring: objections registered from now on are not recognised by a pseudonymize "
            "worker still running with the old ring: (re)start every worker now (docs/operations.md)"
        )
    return 0


def cmd_dlq_redrive(settings: Settings, args: argparse.Namespace) -> int:
    from affluent import dlq

    since = dlq.parse_time(args.since, "--since") if args.since else None
    dlq.redrive_cmd(settings, args.raw_id, since, args.why, dry_run=args.dry_run, force=args.force)
    return 0


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from affluent import dlq
    from affluent.trace import parse_target, trace_cmd

    target = parse_target(args.target, args.sender)
    since = dlq.parse_time(args.since, "--since") if args.since else None
    until = dlq.parse_time(args.until, "--until") if args.until else None
    trace_cmd(settings, target, since, until, args.json, out=lambda line: print(line, flush=True))  # audited
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from affluent import dlq
    from affluent.replay import SOURCES, replay

    replay(
        settings,
        args.stage,
        dlq.parse_time(args.from_, "--from"),
        dlq.parse_time(args.to, "--to") if args.to else None,
        args.source or tuple(SOURCES),
        out=lambda line: print(line, flush=True),
    )
    return 0


def cmd_devices_serve(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from connectors.devices.service import serve_forever

    if args.port is not None:
        devices = settings.devices.model_copy(update={"port": args.port})
        settings = settings.model_copy(update={"devices": devices})
    _start_checks(settings, "devices")
    asyncio.run(serve_forever(settings))
    return 0


def cmd_devices_test_mapping(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from affluent.devices_cli import dumps, test_mapping
    from streams.normalize.result import MappingError

    try:
        records = test_mapping(settings, args.template, Path(args.payload))
    except MappingError as exc:
        where = f" at {exc.location}" if exc.location else ""
        print(f"refused ({exc.code}){where}: {exc.reason}", file=sys.stderr)
        return 1
    print(dumps(records))
    return 0


def cmd_devices_link(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.devices_cli import link
    from formats.devices.registry import Link

    new = Link(
        ipp=args.ipp,
        authority=args.authority,
        valid_from=args.valid_from or datetime.now(UTC),
        valid_to=args.valid_to,
        ins=args.ins,
        ins_oid=args.ins_oid,
        ins_qualified=args.ins_qualified,
        gateway=args.gateway,
    )
    n = link(settings, args.device, new)
    print(f"device linked ({n} period(s) on record)")
    return 0


def cmd_devices_unlink(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.devices_cli import unlink

    unlink(settings, args.device, args.at or datetime.now(UTC))
    print("device unlinked")
    return 0


def cmd_devices_list(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.devices_cli import listing

    for line in listing(settings):
        print(line)
    return 0


def cmd_devices_token(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.devices_cli import new_token

    if args.mapping:
        from formats.devices.templates import load_templates

        known = load_templates(settings.devices.templates_dir)
        unknown = [name for name in args.mapping if name not in known]
        if unknown:
            raise ConfigError(
                f"--mapping {', '.join(unknown)}: no such template (known: {', '.join(sorted(known))})"
            )
    from affluent.audit_cli import record_token

    token, digest = new_token()
    entry: dict[str, Any] = {"sha256": digest, "sender": args.sender}
    if args.mapping:
        entry["mappings"] = args.mapping
    warning = record_token(settings, args.sender, "devices", "--sender", best_effort=True)
    if warning:
        print(warning, file=sys.stderr)
    print(f"token (give it to {args.sender}, shown once): {token}")
    print(f"AFFLUENT_DEVICES__TOKENS={shlex.quote(json.dumps([entry]))}")
    return 0


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from affluent.console.server import serve, start_checks

    if args.port is not None:
        settings = settings.model_copy(
            update={"console": settings.console.model_copy(update={"port": args.port})}
        )
    start_checks(settings)
    asyncio.run(serve(settings, out=lambda line: print(line, flush=True)))
    return 0


def cmd_console_token(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.audit_cli import record_token
    from affluent.core.auth import StaticTokens, new_token

    token, digest = new_token()
    StaticTokens({args.name: digest}, origin="AFFLUENT_CONSOLE__TOKEN_SHA256")  # the console's own check
    warning = record_token(settings, args.name, "console", "--name", best_effort=True)
    if warning:
        print(warning, file=sys.stderr)
    print(f"token (give it to {args.name}, shown once): {token}")
    print(f"AFFLUENT_CONSOLE__TOKEN_SHA256={shlex.quote(json.dumps({args.name: digest}))}")
    return 0


# --- arguments: a wrong one is refused by the parser, in one line, before anything starts --------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusals in affluent's one-line form (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"affluent: error: {message} ({self.prog}): see '{self.prog} --help'\n")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one component (affluent run --list shows them)")
    return names


def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive(text: str) -> float:
    value = _number(float, text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def _positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def _port(text: str) -> int:
    value = int(_number(int, text))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return value


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-11-24T10:15:00+01:00 (no offset: UTC)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL, e.g. http://127.0.0.1:8080/fhir")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="affluent",
        description="Event-streaming hub from hospitals to national health-data platforms.",
        epilog="Every error is one line on stderr; exit 2: a setting, argument or file is wrong; "
        "exit 3: a dependency (Kafka, the registry, a door) is down.",
    )
    parser.add_argument("--version", action="version", version=f"affluent {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error as well")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local Kafka + schema registry (no Docker)")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    for name, func, helptext in (
        ("fetch", cmd_stack_fetch, "download the jars from Maven Central into the cache"),
        ("up", cmd_stack_up, "start Kafka and the registry and wait until healthy"),
        ("down", cmd_stack_down, "stop them"),
        ("status", cmd_stack_status, "tell what runs"),
    ):
        p = stack_sub.add_parser(name, help=helptext)
        p.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="KRaft nodes (3 for faults)")
        if name == "up":
            p.add_argument("--no-registry", action="store_true", help="start Kafka only")
        if name == "down":
            p.add_argument("--wipe", action="store_true", help="also delete data and logs")
        p.set_defaults(func=func)

    network = sub.add_parser(
        "network", help="the local hospital -> region -> national network (MirrorMaker 2)"
    )
    network_sub = network.add_subparsers(dest="network_command", required=True)
    for name, func, helptext in (
        ("up", cmd_network_up, "start one cluster per level and the MirrorMakers between them"),
        ("down", cmd_network_down, "stop them"),
        ("status", cmd_network_status, "tell what runs"),
    ):
        p = network_sub.add_parser(name, help=helptext)
        if name == "up":
            p.add_argument(
                "--clusters", default=None, help="levels, lowest first (default: hospital,region,national)"
            )
            p.add_argument(
                "--hospitals", type=_positive_int, default=1, help="hospital clusters feeding the next level"
            )
        if name == "down":
            p.add_argument("--wipe", action="store_true", help="also delete data and logs")
        p.set_defaults(func=func)

    topics = sub.add_parser("topics", help="Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_sub.add_parser("create", help="create affluent's topics if missing").set_defaults(
        func=cmd_topics_create
    )

    schemas = sub.add_parser("schemas", help="Avro schemas in the registry")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    schemas_sub.add_parser("register", help="register every schema and pin its compatibility").set_defaults(
        func=cmd_schemas_register
    )
    schemas_sub.add_parser(
        "check", help="fail when a schema in the repo is incompatible with the registry"
    ).set_defaults(func=cmd_schemas_check)

    mllp = sub.add_parser("mllp", help="run the HL7 v2 MLLP door until SIGINT/SIGTERM")
    mllp.add_argument("--port", type=_port, default=None, help="listen port (default: settings, 2575)")
    mllp.set_defaults(func=cmd_mllp)

    fhir = sub.add_parser("fhir", help="run the FHIR REST door (resources, Bundles, notifications)")
    fhir.add_argument("--port", type=_port, default=None, help="listen port (default: settings, 8080)")
    fhir.set_defaults(func=cmd_fhir)

    sub.add_parser("normalize", help="run a normalize worker (raw topics -> canonical.*)").set_defaults(
        func=cmd_normalize
    )

    sub.add_parser("pseudonymize", help="run a pseudonymize worker (canonical.* -> national.*)").set_defaults(
        func=cmd_pseudonymize
    )
    sub.add_parser(
        "cohort", help="run a cohort worker (Faust): canonical.* -> cohort.<destination>.* for cohort members"
    ).set_defaults(func=cmd_cohort)

    opposition = sub.add_parser("opposition", help="the patients' right to object (control.opposition)")
    opposition_sub = opposition.add_subparsers(dest="opposition_command", required=True)
    for verb, func, helptext in (
        ("add", cmd_opposition_add, "register an objection (only keyed hashes are stored)"),
        ("remove", cmd_opposition_remove, "withdraw an objection (new events flow again)"),
    ):
        p = opposition_sub.add_parser(verb, help=helptext)
        p.add_argument("--ins", help="INS matricule (NIR)")
        p.add_argument("--ipp", help="local patient id")
        p.add_argument("--authority", help="the IPP's assigning authority (OID or namespace)")
        p.add_argument("--stdin", action="store_true", help='read {"ins": …, "ipp": …, "authority": …}')
        p.set_defaults(func=func)
    opposition_sub.add_parser("list", help="count the registry's entries").set_defaults(
        func=cmd_opposition_list
    )
    opposition_sub.add_parser("serve", help="run the authenticated HTTP endpoint").set_defaults(
        func=cmd_opposition_serve
    )
    token = opposition_sub.add_parser("token", help="make a bearer token for the HTTP endpoint")
    token.add_argument("principal", help="who will use it (a service account name)")
    token.set_defaults(func=cmd_opposition_token)

    risk = sub.add_parser("risk-report", help="k-anonymity of what a destination received")
    risk.add_argument("--destination", required=True, help="hdh, inca, …")
    risk.add_argument("--k", type=int, default=5, help="smallest acceptable class size (default 5)")
    risk.add_argument("--quasi", help="comma-separated quasi-identifier paths (default: per destination)")
    risk.add_argument("--since-hours", type=_positive, help="only records of the last N hours")
    risk.add_argument("--show-classes", action="store_true", help="print the small classes' values")
    risk.add_argument("--fail-below-k", action="store_true", help="exit 1 if a class is smaller than k")
    risk.set_defaults(func=cmd_risk_report)

    pull = sub.add_parser("pull", help="pull a warehouse FHIR server into ingest.fhir.raw (one pass)")
    pull.add_argument("source", help="the source's name in the sources file")
    pull.add_argument("--sources", type=Path, default=None, help="sources file (default: settings)")
    pull.add_argument("--follow", action="store_true", help="keep pulling every interval until stopped")
    pull.add_argument("--reset", action="store_true", help="forget checkpoints: the next pass resyncs")
    pull.add_argument("--type", action="append", help="with --reset: only this resource type (repeatable)")
    pull.set_defaults(func=cmd_pull)

    devices = sub.add_parser("devices", help="telemonitoring devices: HTTPS/MQTT door, templates, registry")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)
    p = devices_sub.add_parser("serve", help="run the HTTPS JSON (and MQTT, if enabled) door")
    p.add_argument("--port", type=_port, default=None, help="HTTP port (default: settings, 8082)")
    p.set_defaults(func=cmd_devices_serve)
    p = devices_sub.add_parser("test-mapping", help="print the Observations a payload yields")
    p.add_argument("template", help="template name, or a .yaml file")
    p.add_argument("payload", help="JSON payload file")
    p.set_defaults(func=cmd_devices_test_mapping)
    p = devices_sub.add_parser("link", help="link a device to a patient from a time (control.devices)")
    p.add_argument("device")
    p.add_argument("--ipp", required=True, help="local patient id")
    p.add_argument("--authority", required=True, help="the IPP's assigning authority (OID or namespace)")
    p.add_argument("--from", dest="valid_from", type=_instant, help="ISO time the link starts (default: now)")
    p.add_argument("--to", dest="valid_to", type=_instant, help="ISO time the link ends (default: open)")
    p.add_argument("--ins", help="INS matricule")
    p.add_argument("--ins-oid", help="INS OID (1.2.250.1.213.1.4.8, .10 for test NIRs)")
    p.add_argument("--ins-qualified", action="store_true", help="the identity is qualified (QUAL)")
    p.add_argument(
        "--gateway", help="the only sender (token sender, MQTT gateway) that may send this device's readings"
    )
    p.set_defaults(func=cmd_devices_link)
    p = devices_sub.add_parser("unlink", help="end the device's open link")
    p.add_argument("device")
    p.add_argument("--at", type=_instant, help="ISO time the link ends (default: now)")
    p.set_defaults(func=cmd_devices_unlink)
    devices_sub.add_parser("list", help="devices and link periods (no patient ids)").set_defaults(
        func=cmd_devices_list
    )
    p = devices_sub.add_parser("token", help="make a bearer token and its AFFLUENT_DEVICES__TOKENS entry")
    p.add_argument("--sender", required=True, help="gateway or device id the token is for")
    p.add_argument(
        "--mapping", action="append", help="a template the token may post to (repeatable; default any)"
    )
    p.set_defaults(func=cmd_devices_token)

    demo = sub.add_parser("demo", help="show the platform working end to end")
    demo.add_argument(
        "--duration", type=_positive, default=60.0, help="seconds of hospital traffic (default 60)"
    )
    demo.add_argument("--rate", type=_positive, default=50.0, help="messages per second (default 50)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the pipeline up for its URLs until Ctrl-C"
    )
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the doors and stream workers as one supervised process group")
    run.add_argument("--only", type=_names, help="comma-separated components (default: every default one)")
    run.add_argument("--list", action="store_true", help="list the components and exit")
    run.set_defaults(func=cmd_run)
    simulate = sub.add_parser(
        "simulate", help="a synthetic hospital sending HL7 v2, FHIR and device traffic, with accounting"
    )
    simulate.add_argument(
        "--patients", type=_positive_int, default=200, help="synthetic patients (default 200)"
    )
    simulate.add_argument("--rate", type=_positive, default=50.0, help="messages per second (default 50)")
    simulate.add_argument("--duration", type=_positive, default=60.0, help="seconds of traffic (default 60)")
    simulate.add_argument("--senders", type=_positive_int, default=4, help="MLLP connections (default 4)")
    simulate.add_argument("--host", default="127.0.0.1", help="the MLLP door's host")
    simulate.add_argument("--port", type=_port, default=None, help="the MLLP door's port (default: settings)")
    simulate.add_argument("--seed", type=int, default=None, help="for a reproducible cohort")
    simulate.add_argument(
        "--fhir-url",
        type=_http_url,
        help="also FHIR resources to this base URL (token: $AFFLUENT_SIMULATE_FHIR_TOKEN)",
    )
    simulate.add_argument(
        "--devices-url",
        type=_http_url,
        help="also readings to this device door (token: $AFFLUENT_SIMULATE_DEVICE_TOKEN)",
    )
    simulate.add_argument("--mqtt-port", type=_port, default=None, help="also gateway batches over MQTT")
    simulate.add_argument("--mqtt-host", default="127.0.0.1", help="the MQTT broker the device door reads")
    simulate.add_argument(
        "--mqtt-prefix", default="sim", help="topics <prefix>/+/gateway-batch (default sim)"
    )
    simulate.set_defaults(func=cmd_simulate)
    tail_ = sub.add_parser("tail", help="print a topic's records decoded through the registry, as JSON lines")
    tail_.add_argument("topic")
    tail_.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record; stop at the newest"
    )
    tail_.add_argument("--follow", action="store_true", help="with --from-beginning: keep waiting for more")
    tail_.add_argument(
        "--wait", type=_positive, default=10.0, help="seconds to wait for Kafka to answer (default 10)"
    )
    tail_.add_argument("--max", type=_positive_int, default=None, help="stop after this many records")
    tail_.set_defaults(func=cmd_tail)
    dlq_ = sub.add_parser("dlq", help="dead letters: how many, of what, from whom; one message's in full")
    dlq_sub = dlq_.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="count dead letters by topic, stage, reason and facility")
    dlq_show = dlq_sub.add_parser("show", help="a message's dead letters with their reason and payload")
    dlq_show.add_argument(
        "raw_id", help="the raw id (8 characters or more of it), as `dlq list --json` or a trace gives"
    )
    for p in (dlq_list, dlq_show):
        p.add_argument(
            "--topic",
            action="append",
            choices=["dlq.ingest", "dlq.normalize", "dlq.cohort", "dlq.pseudonymize"],
            help="only this dead-letter topic (repeatable; default: all of them)",
        )
        p.add_argument("--since", help="ISO 8601 time (UTC without an offset); default: the oldest kept")
    dlq_list.add_argument("--until", help="ISO 8601 time, exclusive; default: now")
    dlq_list.add_argument("--reason", help="only this reason code (see docs/operations.md)")
    dlq_list.add_argument("--facility", help="only this sending facility")
    dlq_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dlq_redrive = dlq_sub.add_parser(
        "redrive", help="hand a message back to the stage that refused it, after a fix (verdict shown first)"
    )
    dlq_redrive.add_argument("raw_id", help="the raw id (8 characters or more of it)")
    dlq_redrive.add_argument("--why", required=True, help="recorded in the audit trail, e.g. a ticket id")
    dlq_redrive.add_argument("--since", help="look for its dead letters from this ISO 8601 time")
    dlq_redrive.add_argument("--dry-run", action="store_true", help="only say what the stage would do now")
    dlq_redrive.add_argument(
        "--force", action="store_true", help="re-drive even if it would be refused again for the same reason"
    )
    dlq_redrive.set_defaults(func=cmd_dlq_redrive)
    dlq_list.set_defaults(func=cmd_dlq_list)
    replay_ = sub.add_parser(
        "replay", help="re-run normalize or pseudonymize over a time range after a fix (same outputs)"
    )
    replay_.add_argument("--stage", default="normalize", choices=["normalize", "pseudonymize"])
    replay_.add_argument("--from", dest="from_", required=True, help="ISO 8601 time (UTC without an offset)")
    replay_.add_argument("--to", help="ISO 8601 time, exclusive; default: the end as the replay starts")
    replay_.add_argument(
        "--source",
        action="append",
        choices=["hl7v2", "fhir", "device"],
        help="only this raw topic (repeatable)",
    )
    replay_.set_defaults(func=cmd_replay)
    dlq_show.set_defaults(func=cmd_dlq_show)
    trace_ = sub.add_parser(
        "trace", help="follow one message hop by hop: raw record, events, national records, dead letters"
    )
    trace_.add_argument(
        "target",
        help="a raw id or event id (8+ hex characters), FACILITY/MSH-10 for HL7, or Type/id with --sender",
    )
    trace_.add_argument("--sender", help="the FHIR sender of a Type/id target")
    trace_.add_argument("--since", help="ISO 8601 time (UTC without an offset); default: 24 hours ago")
    trace_.add_argument("--until", help="ISO 8601 time, exclusive; default: now")
    trace_.add_argument("--json", action="store_true", help="one JSON document")
    trace_.set_defaults(func=cmd_trace)
    audit = sub.add_parser("audit", help="the audit trail (control.audit): who did what, when, on what")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_list = audit_sub.add_parser("list", help="print entries, oldest first, up to the end of the trail")
    audit_list.add_argument("--since", type=_instant, default=None, help="ISO 8601 time, inclusive")
    audit_list.add_argument("--until", type=_instant, default=None, help="ISO 8601 time, exclusive")
    audit_list.add_argument(
        "--action",
        choices=[a.value for a in AuditAction],  # the schema's enum: a new action is listable at once
        default=None,
        help="only this action",
    )
    audit_list.add_argument("--json", action="store_true", help="one JSON object a line")
    audit_list.set_defaults(func=cmd_audit_list)
    console = sub.add_parser(
        "console", help="the operators' web console: health, dead letters and re-drive, trace (aiohttp)"
    )
    console.add_argument("--port", type=_port, default=None, help="listen port (default: settings, 8095)")
    console.set_defaults(func=cmd_console)
    console_sub = console.add_subparsers(dest="console_command")
    p = console_sub.add_parser("token", help="make a login token and its AFFLUENT_CONSOLE__TOKEN_SHA256 line")
    p.add_argument("--name", required=True, help="who will use it: recorded as 'who' in the audit trail")
    p.set_defaults(func=cmd_console_token)
    keys = sub.add_parser("keys", help="pseudonymization key rings: ids only, never a secret")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_list = keys_sub.add_parser("list", help="each ring's key ids, which is current, and their source")
    keys_list.add_argument("--json", action="store_true", help="one JSON object a line")
    keys_list.set_defaults(func=cmd_keys_list)
    keys_rotate = keys_sub.add_parser(
        "rotate", help="add a new random key as a ring's current key in the key file, keeping the older keys"
    )
    keys_rotate.add_argument("--destination", required=True, help="the ring: hdh, inca, opposition, …")
    keys_rotate.add_argument("--key-id", default=None, help="the new key's id (default: <ring>-<date>)")
    keys_rotate.set_defaults(func=cmd_keys_rotate)
    return parser


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_BIND = re.compile(r"address \('?([^',]*)'?, (\d+)")


def _listeners(settings: Settings | None, port: int, args: argparse.Namespace) -> list[str]:
    """The settings (and arguments) that name a listening port, for "port N is in use"."""
    if getattr(args, "port", None) == port:
        return ["--port"]
    names = []
    if settings is not None:
        for section, model in settings:
            if not isinstance(model, BaseModel):
                continue
            for field, value in model:
                if field.endswith("port") and value == port:
                    names.append(f"AFFLUENT_{section.upper()}__{field.upper()}")
    return names


def one_line(
    exc: BaseException, settings: Settings | None, args: argparse.Namespace
) -> tuple[str, int] | None:
    """The one line and the exit code for an error the user can act on; None for anything else (a bug)."""
    if isinstance(exc, Unavailable):
        hint = ""
        if isinstance(exc, KafkaUnavailable) and "AFFLUENT_KAFKA" not in str(exc):
            hint = ": is it running (make up)? Else set AFFLUENT_KAFKA__BOOTSTRAP_SERVERS"
        elif "registry" in str(exc) and "AFFLUENT_REGISTRY" not in str(exc):
            hint = ": is it running (make up)? Else set AFFLUENT_REGISTRY__URL"
        return f"{exc}{hint}", EXIT_UNAVAILABLE
    if isinstance(exc, AffluentError):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, ValidationError):
        return describe_invalid(exc), EXIT_CONFIG
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        found = _BIND.search(str(exc))
        if found is not None and exc.filename is None:
            host, port = found.group(1), int(found.group(2))
            names = _listeners(settings, port, args)
            where = f"{host}:{port}" + (f" ({', '.join(names)})" if names else "")
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"{where} is already in use: stop what listens there, or choose another port",
                    EXIT_CONFIG,
                )
            if exc.errno == errno.EADDRNOTAVAIL:
                return (
                    f"cannot listen on {where}: the address is not this machine's; fix the host",
                    EXIT_CONFIG,
                )
            return (
                f"cannot listen on {where}: permission denied (ports below 1024 need root); choose another",
                EXIT_CONFIG,
            )
    if isinstance(exc, ConnectionError):
        return f"{exc.strerror or exc}: is the service running? Check the host and port", EXIT_UNAVAILABLE
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}", EXIT_CONFIG
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = os.environ.get("AFFLUENT_LOG_LEVEL", "WARNING").upper()
    if level not in _LOG_LEVELS:
        print(
            f"affluent: error: AFFLUENT_LOG_LEVEL is not one of {', '.join(_LOG_LEVELS)}; fix it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings: Settings | None = None
    try:
        settings = load_settings()
        result: int = args.func(settings, args)
        return result
    except KeyboardInterrupt:
        print("affluent: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        answer = one_line(exc, settings, args)
        if answer is None:
            raise
        if args.debug:
            traceback.print_exc()
        message, code = answer
        print(f"affluent: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
