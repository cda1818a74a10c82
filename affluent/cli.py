"""The ``affluent`` command.

Each sub-command is a thin shell over a library call; errors that affluent raises on purpose are
printed as one sentence with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from affluent import __version__
from affluent.errors import AffluentError
from affluent.settings import Settings, load_settings
from affluent.stack import LocalStack

if TYPE_CHECKING:
    from affluent.network import Network


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
    from affluent.network import NETWORK_FILE, Network, plan_topology

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
    from affluent.kafka import ensure_topics
    from affluent.topics import CORE_TOPICS

    created = ensure_topics(settings.kafka, CORE_TOPICS)
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


def cmd_mllp(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from connectors.mllp.service import serve_forever

    if args.port is not None:
        settings = settings.model_copy(update={"mllp": settings.mllp.model_copy(update={"port": args.port})})
    asyncio.run(serve_forever(settings))
    return 0


def cmd_normalize(settings: Settings, args: argparse.Namespace) -> int:
    from streams.normalize.worker import run

    sys.argv = [sys.argv[0]]  # faust's Worker reads its own command line; ours is consumed
    run(settings)
    return 0


def cmd_pseudonymize(settings: Settings, args: argparse.Namespace) -> int:
    from streams.pseudonymize.cli import run_worker

    run_worker(settings)
    return 0


def cmd_opposition_add(settings: Settings, args: argparse.Namespace) -> int:
    from streams.pseudonymize.cli import opposition_add

    n = opposition_add(settings, ins=args.ins, ipp=args.ipp, authority=args.authority)
    print(f"objection registered ({n} entries)")
    return 0


def cmd_opposition_remove(settings: Settings, args: argparse.Namespace) -> int:
    from streams.pseudonymize.cli import opposition_remove

    n = opposition_remove(settings, ins=args.ins, ipp=args.ipp, authority=args.authority)
    print(f"objection withdrawn ({n} entries)")
    return 0


def cmd_opposition_list(settings: Settings, args: argparse.Namespace) -> int:
    from streams.pseudonymize.cli import opposition_list

    print(f"{opposition_list(settings)} entries")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from affluent.demo import run_demo

    return run_demo(settings, out=print)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affluent",
        description="Event-streaming hub from hospitals to national health-data platforms.",
    )
    parser.add_argument("--version", action="version", version=f"affluent {__version__}")
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
                "--hospitals", type=int, default=1, help="hospital clusters feeding the next level"
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
    mllp.add_argument("--port", type=int, default=None, help="listen port (default: settings, 2575)")
    mllp.set_defaults(func=cmd_mllp)

    sub.add_parser("normalize", help="run a normalize worker (raw topics -> canonical.*)").set_defaults(
        func=cmd_normalize
    )

    sub.add_parser("pseudonymize", help="run a pseudonymize worker (canonical.* -> national.*)").set_defaults(
        func=cmd_pseudonymize
    )

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
        p.set_defaults(func=func)
    opposition_sub.add_parser("list", help="count the registry's entries").set_defaults(
        func=cmd_opposition_list
    )

    sub.add_parser("demo", help="show the platform working end to end").set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("AFFLUENT_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
        result: int = args.func(settings, args)
        return result
    except AffluentError as exc:
        print(f"affluent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("affluent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
