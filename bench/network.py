"""Replication through the network: hospital -> national records/s, and catch-up after an outage.

A private two-level network (its own clusters on free ports, wiped afterwards) is started. Three runs:

* ceiling: one Python producer writes the same encoded probe records straight into the national
  cluster (acks=all, lz4, linger 20 ms: MirrorMaker's producer settings) - what the target accepts
  from one client on this machine;
* replication: the national broker is stopped, a backlog is written at the hospital, the broker comes
  back, and the time until every record is upstream gives MirrorMaker's throughput;
* catch-up: a steady stream at the hospital while the national broker is away for 60 s (15 s quick),
  then the time from its return until the backlog is drained.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import Options, register
from bench.report import SuiteResult, Table, fmt_count, fmt_rate

if TYPE_CHECKING:
    from affluent.local.network import Network


def _upstream_count(network: Network, topic: str) -> int:
    from confluent_kafka import TopicPartition

    from affluent.core.kafka import make_consumer

    consumer = make_consumer(network.kafka("national"), group_id="bench-network-count")
    try:
        md = consumer.list_topics(topic, timeout=10)
        parts = md.topics[topic].partitions if topic in md.topics else {}
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        consumer.close()


def _wait_count(network: Network, topic: str, target: int, timeout_s: float) -> float:
    """Seconds until the national copy of `topic` holds `target` records (polled every 0.2 s)."""
    from confluent_kafka import KafkaException

    started = time.perf_counter()
    while True:
        try:
            if _upstream_count(network, topic) >= target:
                break
        except KafkaException:
            pass  # a broker that just came back may not lead its partitions yet
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{topic} did not reach {target} records upstream in {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.perf_counter() - started


@register("network")
def network(options: Options) -> SuiteResult:
    from affluent.core.kafka import TopicSpec, ensure_topics, make_producer
    from affluent.core.settings import load_settings
    from affluent.local.netprobe import (
        PROBE_TOPIC,
        new_event_ids,
        private_network,
        probe_codec,
        probe_event,
        produce_events,
    )

    started = time.perf_counter()
    settings = load_settings()
    backlog = 5_000 if options.quick else 50_000
    outage_s = options.seconds(60.0, 15.0)
    rate = 300.0  # records/s during the outage run: a busy hospital's national feed
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        net = private_network(settings.stack, settings.network, Path(tmp), ["hospital", "national"])
        try:
            codec = probe_codec(net.registry("hospital1"))
            hospital, national = net.kafka("hospital1"), net.kafka("national")

            # ceiling: straight into the national cluster
            ensure_topics(national, [TopicSpec("bench.network.ceiling")])
            producer = make_producer(national, **{"linger.ms": 20})
            value = codec.encode(probe_event("x" * 32, 0))
            t0 = time.perf_counter()
            for i in range(backlog):
                while True:
                    try:
                        producer.produce("bench.network.ceiling", key=str(i).encode(), value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
            producer.flush(120)
            ceiling_s = time.perf_counter() - t0

            # replication of a backlog
            base = _upstream_count(net, PROBE_TOPIC)
            net.stop_cluster("national")
            produce_events(hospital, codec, new_event_ids(backlog))
            net.start_cluster("national")
            replication_s = _wait_count(net, PROBE_TOPIC, base + backlog, timeout_s=600)

            # catch-up after an outage under steady traffic
            base = _upstream_count(net, PROBE_TOPIC)
            stop = threading.Event()
            sent = [0]

            def steady() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    sent[0] += produce_events(hospital, codec, new_event_ids(int(rate)))
                    stop.wait(max(0.0, 1.0 - (time.perf_counter() - t)))

            writer = threading.Thread(target=steady, daemon=True)
            writer.start()
            time.sleep(5)
            before_outage = sent[0]
            net.stop_cluster("national")
            time.sleep(outage_s)
            t_back = time.perf_counter()
            net.start_cluster("national")
            restart_s = time.perf_counter() - t_back
            due = sent[0]
            catchup_s = restart_s + _wait_count(net, PROBE_TOPIC, base + due, timeout_s=600)
            stop.set()
            writer.join()
        finally:
            net.down(wipe=True)

    rows = [
        [
            "ceiling: one producer into the national cluster",
            fmt_count(backlog),
            fmt_rate(backlog / ceiling_s),
        ],
        [
            "MirrorMaker 2 hospital -> national (backlog)",
            fmt_count(backlog),
            fmt_rate(backlog / replication_s),
        ],
    ]
    return SuiteResult(
        name="network",
        title="Network replication (MirrorMaker 2, hospital -> national)",
        tables=[
            Table(["run", "records", "records/s"], rows, align=["l", "r", "r"]),
            Table(
                ["outage", "traffic", "backlog at return", "broker restart", "catch-up (incl. restart)"],
                [
                    [
                        f"{outage_s:.0f} s",
                        f"{rate:.0f} records/s",
                        fmt_count(due - before_outage),
                        f"{restart_s:.1f} s",
                        f"{catchup_s:.1f} s",
                    ]
                ],
                title="Catch-up after the national cluster was away",
                align=["r", "r", "r", "r", "r"],
            ),
        ],
        how_measured=(
            "Private single-node clusters on this machine (no other traffic in them); the replication time "
            "runs from the national broker's restart to the last record counted upstream (end offsets)."
        ),
        seconds=time.perf_counter() - started,
    )
