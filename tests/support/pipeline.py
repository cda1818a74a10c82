"""Helpers for the integration tests that run stream workers as real subprocesses on the shared broker.

Workers start in fresh consumer groups whose offsets are first committed at the current end of their
input topics, so a test processes its own records only, however much history the topics hold.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from affluent.core.kafka import make_consumer
from affluent.core.settings import KafkaSettings

KEY_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "keys" / "test-keys.json"


def _private_copy(source: Path) -> Path:
    """The test keys as a key file must be: readable by its owner only (git checks files out 0644, and
    the pseudonymize worker refuses a key file others can read)."""
    folder = Path(tempfile.mkdtemp(prefix="affluent-test-keys-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / source.name
    target.write_bytes(source.read_bytes())
    target.chmod(0o600)
    return target


KEY_FILE = _private_copy(KEY_FIXTURE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ends(kafka: KafkaSettings, topics: list[str] | tuple[str, ...]) -> list[TopicPartition]:
    """The current end offset of every partition of ``topics``."""
    consumer = make_consumer(kafka, group_id=f"test-ends-{uuid.uuid4().hex[:8]}")
    try:
        out = []
        for topic in topics:
            md = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in md.partitions:
                for attempt in range(40):  # a topic just created may not have its leader yet
                    try:
                        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                        break
                    except KafkaException:
                        if attempt == 39:
                            raise
                        time.sleep(0.25)
                out.append(TopicPartition(topic, p, high))
        return out
    finally:
        consumer.close()


def start_group_at(kafka: KafkaSettings, group: str, positions: list[TopicPartition]) -> None:
    consumer = make_consumer(kafka, group_id=group)
    try:
        consumer.commit(offsets=positions, asynchronous=False)
    finally:
        consumer.close()


@contextmanager
def worker(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in ``log``; terminated (then killed) on exit."""
    with log.open("wb") as err:
        proc = subprocess.Popen(args, env=env, stdout=err, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if the process is still there after ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def seen_event_ids(
    kafka: KafkaSettings, start: list[TopicPartition], want: set[str], timeout_s: float
) -> set[str]:
    """Which of ``want`` (national event ids, found in the values' bytes) appear on the topics of
    ``start`` after those positions; returns as soon as all are seen, or what was seen at the timeout.
    Reads from ``start`` every time, so a test can call it again later for another phase."""
    consumer = make_consumer(kafka, group_id=f"test-seen-{uuid.uuid4().hex[:8]}")
    consumer.assign(start)
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not want <= seen:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = msg.value() or b""
            seen |= {w for w in want - seen if w.encode() in value}
        # drain what is already there, so ids that were not wanted but present are reported too
        while (msg := consumer.poll(0.5)) is not None:
            if not msg.error():
                value = msg.value() or b""
                seen |= {w for w in want if w.encode() in value}
    finally:
        consumer.close()
    return seen


def records_on(
    kafka: KafkaSettings, start: list[TopicPartition], topics: set[str], decode: Any, quiet_s: float = 2.0
) -> list[tuple[str, Any]]:
    """(key, decoded value) of every record on ``topics`` after ``start``, until nothing new for ``quiet_s``."""
    consumer = make_consumer(kafka, group_id=f"test-records-{uuid.uuid4().hex[:8]}")
    consumer.assign([tp for tp in start if tp.topic in topics])
    out: list[tuple[str, Any]] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            msg = consumer.poll(0.3)
            if msg is None or msg.error():
                continue
            out.append(((msg.key() or b"").decode(), decode(msg.value())))
            last = time.monotonic()
    finally:
        consumer.close()
    return out


def pseudonymize_sources(kafka: KafkaSettings) -> list[str]:
    """Every topic a pseudonymize worker reads: canonical.* and the cohort topics of the cohort-scoped
    destinations (created if missing), so a test's group can start at their ends."""
    from affluent.core.kafka import TopicSpec, ensure_topics
    from schemas.catalog import CANONICAL_TOPICS, cohort_topics_of

    topics = [*CANONICAL_TOPICS, *cohort_topics_of(["inca"])]
    ensure_topics(kafka, [TopicSpec(t) for t in topics])
    return topics


def door_raw(payload: bytes, with_digest: bool = False) -> Any:
    """The raw record the MLLP door stores for ``payload`` (which must be accepted): its header's sender
    and control id; ``with_digest`` records the content digest as the door does."""
    from connectors.mllp.intake import Accepted, IntakePolicy, assess
    from connectors.raw import RawMessage

    accepted = assess(payload, IntakePolicy())
    assert isinstance(accepted, Accepted), accepted
    h = accepted.header
    attributes = {"content_digest": accepted.digest} if with_digest else {}
    return RawMessage(
        "hl7v2",
        "mllp",
        h.sending_facility,
        h.sending_application,
        payload,
        "x-application/hl7-v2+er7",
        h.control_id,
        attributes=attributes,
    )
