"""``affluent demo``: the main job, shown end to end on the local stack with synthetic patients.

1. Foundation: a registered Avro record is written with ``acks=all`` and read back through the registry.
2. Pipeline: ``affluent run`` (a real child process: the MLLP, FHIR and device doors, the normalize and
   pseudonymize workers) on free ports with a run's own bearer tokens, a local Mosquitto for the MQTT
   door (left out, with a hint, when mosquitto is not installed), and ``affluent simulate``'s synthetic
   hospital sending ADT and ORU over MLLP, FHIR resources and Bundles over HTTP, and device readings
   over HTTP JSON and MQTT for ``duration_s`` seconds with a live progress view.
3. Accounting: every message the hospital saw acknowledged is found downstream — in a national topic,
   as a counted opposition drop, or as a dead letter with its reason — in total and per channel. Then
   ``affluent run`` and Mosquitto are stopped cleanly (with ``keep_running``, after Ctrl-C: the URLs the
   demo prints stay up until then). The demo fails (exit 1) if anything is missing or the stop was not
   clean. It says where its pseudonymization keys are (``.state/demo-keys.json`` unless given).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from confluent_kafka import KafkaError, Message, TopicPartition

from affluent.core.errors import AffluentError, ConfigError
from affluent.core.kafka import TopicSpec, ensure_topics, make_consumer, make_producer, wait_for_kafka
from affluent.core.settings import Settings
from affluent.core.topics import CORE_TOPICS, INGEST_HL7V2_RAW, value_subject
from affluent.local.procs import stop_run
from schemas.catalog import CANONICAL_TOPICS, cohort_topics_of, register_all
from schemas.registry import AvroCodec, Registry, load_schema

if TYPE_CHECKING:
    from affluent.sim.devices import DeviceTarget
    from affluent.sim.fhir import FhirTarget

Out = Callable[[str], None]

SYNTHETIC_ADT = (
    "MSH|^~\\&|DEMO-PAS|DEMO-HOSP|AFFLUENT|HUB|20261124101500+0100||ADT^A01^ADT_A01|DEMO0001|P|2.5|||||FRA|8859/1\r"
    "EVN||20261124101500+0100\r"
    "PID|||DEMO-IPP-1^^^DEMO-HOSP&1.2.250.1.71.4.2.7&ISO^PI||SYNTHÉTIQUE^Zoé^^^^^L||19800101|F\r"
    "PV1||I|CARDIO^101^1\r"
).encode("latin-1")


def demo_record() -> dict[str, Any]:
    return {
        "raw_id": hashlib.sha256(b"hl7v2|DEMO-HOSP|DEMO-PAS|DEMO0001").hexdigest(),
        "protocol": "hl7v2",
        "connector": "demo",
        "source_facility": "DEMO-HOSP",
        "source_application": "DEMO-PAS",
        "message_id": "DEMO0001",
        "message_type": "ADT^A01",
        "peer": None,
        "received_at": datetime.now(UTC).replace(microsecond=0),
        "content_type": "x-application/hl7-v2+er7",
        "declared_charset": "8859/1",
        "charset_mismatch": False,
        "payload": SYNTHETIC_ADT,
        "attributes": {"demo": "true"},
    }


def run_demo(
    settings: Settings, out: Out, duration_s: float = 60.0, rate: float = 50.0, keep_running: bool = False
) -> int:
    if not (duration_s > 0 and rate > 0):
        raise ConfigError("the demo needs a duration and a rate above 0 (--duration, --rate)")
    brokers = wait_for_kafka(settings.kafka, timeout_s=10)
    out(f"Kafka: {brokers} broker(s) at {settings.kafka.bootstrap_servers}")
    ensure_topics(settings.kafka, CORE_TOPICS)
    registry = Registry(settings.registry)
    registered = register_all(registry)
    out(f"Registry: {len(registered)} subjects registered with their compatibility rules ({registry.url})")
    if not round_trip(settings, registry, out):
        return 1
    return pipeline(settings, out, duration_s, rate, keep_running)


def round_trip(settings: Settings, registry: Registry, out: Out) -> bool:
    codec = AvroCodec(registry, value_subject(INGEST_HL7V2_RAW), load_schema("raw_message"), "BACKWARD")
    record = demo_record()
    producer = make_producer(settings.kafka)
    reports: list[Message] = []
    started = time.perf_counter()
    producer.produce(
        INGEST_HL7V2_RAW,
        key=b"DEMO-HOSP|DEMO-PAS",
        value=codec.encode(record),
        on_delivery=lambda err, msg: reports.append(msg) if err is None else _raise(err),
    )
    producer.flush(settings.kafka.delivery_timeout_ms / 1000)
    if not reports:
        raise AffluentError("Kafka did not acknowledge the demo record")
    acked = reports[0]
    ack_ms = (time.perf_counter() - started) * 1000
    consumer = make_consumer(settings.kafka, group_id=f"affluent-demo-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(INGEST_HL7V2_RAW, acked.partition() or 0, acked.offset() or 0)])
        msg = consumer.poll(10)
    finally:
        consumer.close()
    if msg is None or msg.error() is not None or msg.value() is None:
        raise AffluentError("could not read the demo record back from Kafka")
    same = codec.decode(msg.value() or b"") == record
    out(
        f"Round trip: Avro record (schema id {codec.schema_id}) acked by Kafka in {ack_ms:.1f} ms at "
        f"{INGEST_HL7V2_RAW}[{acked.partition()}]@{acked.offset()}, read back identical: {same}"
    )
    return same


def demo_keys(settings: Settings) -> Path:
    """The key file of the national feed: AFFLUENT_PSEUDO_KEY_FILE when set, else random local keys.

    The demo's keys are generated on this machine into the git-ignored state folder (never the test
    keys, never in the repository); a real deployment provides its own through a key provider.
    """
    configured = os.environ.get("AFFLUENT_PSEUDO_KEY_FILE")
    if configured:
        return Path(configured)
    path = settings.stack.state_dir / "demo-keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rings = {
            ring: [
                {
                    "key_id": f"DEMO-LOCAL-{ring}-1",
                    "secret": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "active": True,
                }
            ]
            for ring in ("hdh", "inca", "opposition")
        }
        path.write_text(json.dumps(rings, indent=2))
        path.chmod(0o600)
    return path


DEMO_GROUPS = {
    # Stable groups of the demo's own: a worker of another checkout on a shared broker (default groups)
    # must not take half of the demo's partitions, and the committed offsets skip older demos' records.
    "AFFLUENT_STREAMS__NORMALIZE_GROUP": "affluent-demo-normalize",
    "AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP": "affluent-demo-pseudonymize",
    "AFFLUENT_STREAMS__COHORT_GROUP": "affluent-demo-cohort",
}


def prepare_groups(settings: Settings, env: dict[str, str]) -> None:
    """The demo's workers start with the traffic that comes next, not with the topics' history (which,
    on a shared broker, may be large)."""
    from affluent.sim.accounting import start_group_at_end
    from streams.normalize.worker import RAW_TOPICS
    from streams.pseudonymize.worker import cohort_scoped

    normalize = env["AFFLUENT_STREAMS__NORMALIZE_GROUP"]
    pseudonymize = env["AFFLUENT_STREAMS__PSEUDONYMIZE_GROUP"]
    cohorts = env["AFFLUENT_STREAMS__COHORT_GROUP"]
    cohort_topics = cohort_topics_of(sorted(cohort_scoped(settings)))
    ensure_topics(settings.kafka, [TopicSpec(t) for t in (*CANONICAL_TOPICS, *cohort_topics)])
    start_group_at_end(settings.kafka, normalize, RAW_TOPICS, skip_backlog=True)
    start_group_at_end(settings.kafka, pseudonymize, [*CANONICAL_TOPICS, *cohort_topics], skip_backlog=True)
    start_group_at_end(settings.kafka, cohorts, CANONICAL_TOPICS, skip_backlog=True)


def run_environment(settings: Settings, key_file: Path) -> tuple[dict[str, str], int, int]:
    """Environment of the demo's ``affluent run``: free ports for every listener, the demo keys and
    groups. Returns it with the MLLP port and the supervisor's port."""
    mllp, supervisor = _free_port(), _free_port()
    env = {
        "AFFLUENT_PSEUDO_KEY_FILE": str(key_file),
        "AFFLUENT_MLLP__PORT": str(mllp),
        "AFFLUENT_MLLP__METRICS_PORT": str(_free_port()),
        "AFFLUENT_FHIR_REST__PORT": str(_free_port()),
        "AFFLUENT_FHIR_REST__METRICS_PORT": str(_free_port()),
        "AFFLUENT_DEVICES__PORT": str(_free_port()),
        "AFFLUENT_DEVICES__METRICS_PORT": str(_free_port()),
        "AFFLUENT_STREAMS__METRICS_PORT": str(_free_port()),
        "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": str(_free_port()),
        "AFFLUENT_STREAMS__COHORT_METRICS_PORT": str(_free_port()),
        "AFFLUENT_STREAMS__COHORT_STATE_DIR": str(settings.stack.state_dir / "demo-cohort"),
        "AFFLUENT_RUN__METRICS_PORT": str(supervisor),
        **{name: os.environ.get(name, group) for name, group in DEMO_GROUPS.items()},
    }
    return env, mllp, supervisor


def channel_environment(
    env: Mapping[str, str], mqtt_port: int | None, host: str = "127.0.0.1"
) -> tuple[dict[str, str], FhirTarget, DeviceTarget]:
    """What the FHIR and device doors of a ``run_environment`` need for the simulated hospital: fresh
    bearer tokens (only their digests go to the doors) and, with a broker, the MQTT subscription."""
    from affluent.core.auth import token_digest
    from affluent.sim.devices import GATEWAY_TEMPLATE, DeviceTarget
    from affluent.sim.fhir import FhirTarget

    fhir = FhirTarget(f"http://{host}:{env['AFFLUENT_FHIR_REST__PORT']}/fhir", secrets.token_urlsafe(24))
    devices = DeviceTarget(
        f"http://{host}:{env['AFFLUENT_DEVICES__PORT']}", secrets.token_urlsafe(24), mqtt_port=mqtt_port
    )
    extra = {
        "AFFLUENT_FHIR_REST__TOKEN_SHA256": json.dumps({token_digest(fhir.token): fhir.sender}),
        "AFFLUENT_DEVICES__TOKENS": json.dumps(
            [{"sha256": token_digest(devices.token), "sender": devices.sender}]
        ),
    }
    if mqtt_port is not None:
        extra |= {
            "AFFLUENT_DEVICES__MQTT__ENABLED": "true",
            "AFFLUENT_DEVICES__MQTT__HOST": host,
            "AFFLUENT_DEVICES__MQTT__PORT": str(mqtt_port),
            "AFFLUENT_DEVICES__MQTT__TOPICS": json.dumps({devices.topic_filter: GATEWAY_TEMPLATE}),
            "AFFLUENT_DEVICES__MQTT__CLIENT_ID": f"affluent-demo-{uuid.uuid4().hex[:8]}",
        }
    return extra, fhir, devices


@contextlib.contextmanager
def local_mosquitto(settings: Settings, out: Out) -> Iterator[int | None]:
    """A Mosquitto of the run's own (free port, under the state folder), or None when not installed."""
    from affluent.local.mosquitto import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        out("MQTT: mosquitto is not installed (Debian: apt-get install mosquitto): devices over HTTP only")
        yield None
        return
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="mosquitto-", dir=_state(settings))))
    broker.start()
    out(f"MQTT: Mosquitto on 127.0.0.1:{broker.port} for the device door")
    try:
        yield broker.port
    finally:
        broker.stop()
        shutil.rmtree(broker.folder, ignore_errors=True)


def _state(settings: Settings) -> Path:
    settings.stack.state_dir.mkdir(parents=True, exist_ok=True)
    return settings.stack.state_dir


def _forward(stream: IO[str], out: Out) -> None:
    for line in stream:
        out(f"  [run] {line.rstrip()}")


def run_health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except (OSError, ValueError):
        return None


def wait_ready(process: subprocess.Popen[str], port: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AffluentError(f"affluent run ended early (exit code {process.returncode})")
        health = run_health(port)
        if health is not None and health.get("ready"):
            return health
        time.sleep(0.5)
    raise AffluentError(f"affluent run was not ready within {timeout_s:.0f} s (see .state/run/*.log)")


DEMO_COMPONENTS = ("mllp", "fhir", "devices", "normalize", "cohort", "pseudonymize")


def start_run(env: Mapping[str, str], only: Sequence[str] | None, stdout: int) -> subprocess.Popen[str]:
    """``affluent run`` as a child with ``env`` over this process's environment (output: ``stdout``,
    e.g. ``subprocess.PIPE`` to forward it, or ``subprocess.DEVNULL``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "affluent.cli", "run", *(["--only", ",".join(only)] if only else [])],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def pipeline(settings: Settings, out: Out, duration_s: float, rate: float, keep_running: bool = False) -> int:
    with local_mosquitto(settings, out) as mqtt_port:
        return _pipeline(settings, out, duration_s, rate, mqtt_port, keep_running)


def keys_line(key_file: Path, configured: bool) -> str:
    """Where the demo's pseudonymization keys are, and how they got there."""
    if configured:
        return f"Pseudonymization keys: {key_file} (from AFFLUENT_PSEUDO_KEY_FILE)"
    return (
        f"Pseudonymization keys: {key_file} (random, made on this machine at the first demo, readable by "
        "you only, git-ignored; delete it for new ones)"
    )


def hold(process: subprocess.Popen[str], out: Out) -> None:
    """Wait until Ctrl-C (SIGINT) or SIGTERM, or until ``affluent run`` ends on its own."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        process.wait()
        out(f"affluent run ended on its own (exit code {process.returncode})")
    except KeyboardInterrupt:
        out("")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pipeline(
    settings: Settings,
    out: Out,
    duration_s: float,
    rate: float,
    mqtt_port: int | None,
    keep_running: bool = False,
) -> int:
    from affluent.sim.simulate import Plan, live_progress, report_lines, simulate

    configured = "AFFLUENT_PSEUDO_KEY_FILE" in os.environ
    key_file = demo_keys(settings)
    os.environ.setdefault("AFFLUENT_PSEUDO_KEY_FILE", str(key_file))
    out(keys_line(key_file, configured))
    env, mllp_port, run_port = run_environment(settings, Path(os.environ["AFFLUENT_PSEUDO_KEY_FILE"]))
    extra, fhir, devices = channel_environment(env, mqtt_port)
    env |= extra
    prepare_groups(settings, env)
    process = start_run(env, DEMO_COMPONENTS, subprocess.PIPE)
    threading.Thread(target=_forward, args=(process.stdout, out), daemon=True).start()
    stopped: int | None = None
    try:
        health = wait_ready(process, run_port, 180)
        out(f"affluent run: {', '.join(health['children'])} ready (supervisor :{run_port})")
        plan = Plan(
            rate=rate,
            duration_s=duration_s,
            port=mllp_port,
            patients=max(50, int(rate * 4)),
            fhir=fhir,
            devices=devices,
        )
        tty = sys.stdout.isatty()
        accounts = asyncio.run(simulate(settings, plan, out, live_progress(out, tty)))
        if tty:
            out("")
        out("")
        for line in report_lines(accounts):
            out(line)
        out("")
        if keep_running:
            out("Where to look (the pipeline stays up until Ctrl-C):")
        else:
            out("Where to look (`affluent demo --keep-running` leaves the pipeline up for these URLs):")
        out(f"  supervisor    http://127.0.0.1:{run_port}/health  and /metrics (children, restarts)")
        for name, child in health["children"].items():
            out(f"  {name:<13} {child['metrics']}")
        out("  decoded national records:  affluent tail national.hdh.observation.v1 --from-beginning --max 5")
        out("  what each destination receives: docs/pseudonymization.md; logs: .state/run/*.log")
        if keep_running:
            out(
                f"  doors         MLLP 127.0.0.1:{mllp_port}, FHIR {fhir.base_url}, "
                f"devices {devices.http_url}"
            )
            out(
                f"  more traffic  AFFLUENT_PSEUDO_KEY_FILE={os.environ['AFFLUENT_PSEUDO_KEY_FILE']} "
                f"affluent simulate --port {mllp_port} --duration 30"
            )
            out("The pipeline keeps running; Ctrl-C stops it.")
            hold(process, out)
    finally:
        out("Stopping affluent run (doors first, then workers)…")
        stopped = stop_run(process, settings.run.stop_timeout_s * 2 + 10)
    if stopped != 0:
        out(f"affluent run did not stop cleanly (exit code {stopped})")
    return 0 if accounts.total.complete and stopped == 0 else 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise(err: KafkaError) -> None:
    raise AffluentError(f"Kafka refused the demo record: {err.str()}")
