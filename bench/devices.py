"""Devices suite: readings per second acknowledged by the HTTPS JSON door in batches, against the real broker.

A gateway posts batches (the ``gateway-batch`` shape, :data:`BATCH` readings per request) and counts a
reading only when its request got a 202, i.e. after Kafka acknowledged the raw record. Posters run in a
spawned process so that their Python work never shares the door's GIL. Beside the figure, the same run
measures its ceilings:

- *echo door*: the same posters against an aiohttp server that reads the body and answers 202 at once
  (no template, no Kafka): the ceiling of HTTP + harness on this machine;
- *template only*: the door's validation (JSON parse + template) in a loop, no HTTP, no Kafka;
- *Kafka*: raw records of the same size through a bare producer with the door's configuration;
- *normalize*: the device mapper + Avro encoding per reading in-process — the cost on the way to
  ``canonical.observation``.

Then a paced run at :data:`PACED_RATE` readings/s gives the acknowledgement latency a gateway sees.

MQTT: a spawned publisher sends QoS 1 messages of :data:`MQTT_BATCH` readings to a Mosquitto started for
the run; the figure is readings stored in Kafka (and only then PUBACKed) per second, from the first
publish to the last reading stored. Its ceiling is a bare subscriber (automatic PUBACK, no work) fed by
the same publisher through the same broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from affluent.core.kafka import TopicSpec, ensure_topics, make_producer
from affluent.core.settings import DeviceMqttSettings, DeviceSettings, DeviceToken, Settings, load_settings
from bench import Options, register
from bench.loadproc import LoadProcess
from bench.report import SuiteResult, Table, Target, fmt_ms, fmt_rate, fmt_ratio, percentile

BATCH = 500
POSTERS = 8
TARGET = 10_000  # readings/s acknowledged, in batches
PACED_RATE = 1_000  # readings/s offered in the latency run
PACED_BATCH = 50
TOKEN = "bench-token-not-a-secret"


def bodies(count: int, batch: int, seed: int = 0, sensors: list[str] | None = None) -> list[bytes]:
    """Distinct gateway batches of SpO2/pulse readings one minute apart, from ``sensors`` when given."""
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=seed)
    out = []
    for n in range(count):
        measurements = [
            {
                "sensor": sensors[(n * batch + i) % len(sensors)]
                if sensors
                else f"0012A3FFFE{(n * batch + i) % 4096:06X}",
                "kind": "spo2" if i % 2 == 0 else "pulse",
                "v": 95 + i % 5 if i % 2 == 0 else 60 + i % 40,
                "t": (start + timedelta(minutes=n * batch + i)).isoformat().replace("+00:00", "Z"),
            }
            for i in range(batch)
        ]
        out.append(json.dumps({"gateway": f"GW-{n % 16:04d}", "measurements": measurements}).encode())
    return out


# ---------------------------------------------------------------------------- load (spawned process)
@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    posters: int
    warmup_s: float
    duration_s: float
    bodies: list[bytes]
    readings_per_body: int
    rate: float | None = None  # requests/s in total; None = flat out


@dataclass(slots=True)
class LoadResult:
    readings: int = 0  # acknowledged (202) inside the window
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    window_s: float = 0.0


async def _poster(index: int, session: Any, spec: LoadSpec, begin: float, result: LoadResult) -> None:
    window_start, window_end = begin + spec.warmup_s, begin + spec.warmup_s + spec.duration_s
    interval = spec.posters / spec.rate if spec.rate else 0.0
    scheduled = begin + index * interval / spec.posters
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    count = index
    while True:
        now = time.perf_counter()
        if interval:
            if scheduled >= window_end:
                return
            await asyncio.sleep(max(0.0, scheduled - now))
            scheduled += interval
        elif now >= window_end:
            return
        body = spec.bodies[count % len(spec.bodies)]
        count += spec.posters
        sent = time.perf_counter()
        async with session.post(spec.url, data=body, headers=headers) as resp:
            await resp.read()
            status = resp.status
        done = time.perf_counter()
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 202 and window_start <= done < window_end:
            result.readings += spec.readings_per_body
            result.latencies.append(done - sent)


async def drive(spec: LoadSpec) -> LoadResult:
    import aiohttp

    result = LoadResult(window_s=spec.duration_s)
    connector = aiohttp.TCPConnector(limit=spec.posters)
    async with aiohttp.ClientSession(connector=connector) as session:
        begin = time.perf_counter() + 0.05
        await asyncio.gather(*(_poster(i, session, spec, begin, result) for i in range(spec.posters)))
    result.latencies.sort()
    return result


# ---------------------------------------------------------------------------- ceilings
class EchoDoor:
    """Reads the body and answers 202: what HTTP and the posters cost with no work at all."""

    async def start(self) -> int:
        from aiohttp import web

        async def echo(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"accepted": 0}, status=202)

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/devices/{mapping}", echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        await self._runner.cleanup()


def template_only(payloads: list[bytes], seconds: float) -> float:
    from formats.devices.templates import load_templates, read_payload

    template = load_templates()["gateway-batch"]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for body in payloads:
            done += len(read_payload(template, body))
    return done / (time.perf_counter() - started)


def kafka_records(topic: str, payloads: list[bytes], seconds: float) -> float:
    """Raw-sized records/s through a bare producer with the door's configuration (acks=all)."""
    producer = make_producer(load_settings().kafka)
    delivered = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            delivered[0] += 1

    producer.produce(topic, payloads[0], b"warm")
    producer.flush(30)
    produced, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        try:
            producer.produce(
                topic, payloads[produced % len(payloads)], b"GW|gateway-batch", on_delivery=on_delivery
            )
            produced += 1
        except BufferError:
            producer.poll(0.005)
        producer.poll(0)
    producer.flush(60)
    return delivered[0] / (time.perf_counter() - started)


def normalize_only(payloads: list[bytes], seconds: float) -> float:
    """Device mapper + Avro encoding (registry codecs), readings/s, every sensor linked."""
    from connectors.raw import RawMessage
    from formats.devices.registry import DeviceRegistry, Link, add_link, encode_links
    from formats.devices.templates import load_templates
    from schemas.registry import AvroCodec, Registry, load_schema
    from streams.normalize.device import DeviceMapper
    from streams.normalize.options import MappingOptions
    from streams.normalize.stage import NormalizeMetrics, Normalizer

    since = datetime(2026, 1, 1, tzinfo=UTC)
    links = {
        f"0012A3FFFE{n:06X}": encode_links(
            "x", add_link([], Link(f"{n:08d}", "1.2.250.1.71.4.2.7.99", since))
        )
        for n in range(4096)
    }
    templates = load_templates()
    registry = Registry(load_settings().registry)
    mapper = DeviceMapper(templates, DeviceRegistry(links.get))
    normalizer = Normalizer(
        registry, MappingOptions(), NormalizeMetrics(CollectorRegistry()), {"device": mapper}
    )
    raw_codec = AvroCodec(registry, "ingest.device.raw-value", load_schema("raw_message"), "BACKWARD")
    template = templates["gateway-batch"]
    raws = [
        raw_codec.encode(
            RawMessage(
                "device",
                "devices_http",
                "GW",
                template.name,
                body,
                "application/json",
                attributes={"mapping": template.name},
            ).record(datetime.now(UTC))
        )
        for body in payloads
    ]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for value in raws:
            outputs = normalizer.process(value, "ingest.device.raw", 0, 0)
            done += len(outputs)
    return done / (time.perf_counter() - started)


# ---------------------------------------------------------------------------- MQTT
MQTT_BATCH = 50  # readings per MQTT message


@dataclass(frozen=True, slots=True)
class PublishSpec:
    port: int
    topic: str
    payloads: list[bytes]
    count: int


async def publish(spec: PublishSpec) -> float:
    """A gateway publishing ``count`` QoS 1 messages as fast as the broker acknowledges; returns seconds."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}"
    )
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", spec.port)
    client.loop_start()
    started = time.perf_counter()
    infos = [
        client.publish(spec.topic, spec.payloads[n % len(spec.payloads)], qos=1) for n in range(spec.count)
    ]
    for info in infos:
        await asyncio.to_thread(info.wait_for_publish, 60)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


def _quiet(watch: CanonicalWatch, seconds: float = 2.0) -> bool:
    """True once no new record arrived for ``seconds`` (checked by sampling the count)."""
    before = len(watch.latencies)
    time.sleep(seconds)
    return len(watch.latencies) == before


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``condition`` held (polled every 5 ms), or raises when it never did."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError("the MQTT run did not finish in time")
        time.sleep(0.005)
    return time.perf_counter() - started


async def _mqtt_rates(settings: Settings, count: int) -> tuple[float, float]:
    """(door readings/s stored in Kafka before PUBACK, bare-subscriber ceiling readings/s)."""
    import tempfile
    from pathlib import Path

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from affluent.local.mosquitto import Mosquitto
    from connectors.devices.service import DeviceService

    payloads = bodies(16, MQTT_BATCH, seed=2)
    total = count * MQTT_BATCH
    publisher: LoadProcess[PublishSpec, float] = LoadProcess(publish, "bench-mqtt-publisher")
    with tempfile.TemporaryDirectory() as folder:
        broker = Mosquitto(Path(folder))
        broker.start()
        try:
            prefix = f"bench/{uuid.uuid4().hex[:8]}"
            topic = f"bench.device.mqtt.{uuid.uuid4().hex[:8]}"
            ensure_topics(settings.kafka, [TopicSpec(topic, partitions=3)])
            mqtt_settings = DeviceMqttSettings(
                enabled=True,
                port=broker.port,
                client_id=f"bench-door-{uuid.uuid4().hex[:8]}",
                topics={f"{prefix}/door/+": "gateway-batch"},
            )
            devices = DeviceSettings(port=0, metrics_port=None, mqtt=mqtt_settings)
            counters = CollectorRegistry()
            service = DeviceService(
                settings.model_copy(update={"devices": devices}), counters, raw_topic=topic
            )
            await service.start(with_telemetry=False)
            try:
                assert service.mqtt is not None
                await asyncio.wait_for(service.mqtt.subscribed.wait(), 10)

                def stored() -> bool:
                    labels = {"door": "mqtt", "template": "gateway-batch"}
                    value = counters.get_sample_value("affluent_device_readings_accepted_total", labels)
                    return (value or 0) >= total

                spec = PublishSpec(broker.port, f"{prefix}/door/GW-0042", payloads, count)
                waiting = asyncio.create_task(asyncio.to_thread(_wait_until, stored, 120))
                await asyncio.to_thread(publisher.run, spec)
                door_rate = total / await waiting
            finally:
                await service.stop()

            received = [0]
            client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-echo")

            def on_message(_c: Any, _u: Any, _m: Any) -> None:
                received[0] += 1

            granted = threading.Event()
            client.on_message = on_message
            client.on_subscribe = lambda *_args: granted.set()
            client.connect("127.0.0.1", broker.port)
            client.subscribe(f"{prefix}/echo/+", qos=1)
            client.loop_start()
            await asyncio.to_thread(granted.wait, 10)
            try:
                echo_spec = PublishSpec(broker.port, f"{prefix}/echo/GW-0042", payloads, count)
                waiting = asyncio.create_task(
                    asyncio.to_thread(_wait_until, lambda: received[0] >= count, 120)
                )
                await asyncio.to_thread(publisher.run, echo_spec)
                echo_rate = total / await waiting
            finally:
                client.disconnect()
                client.loop_stop()
        finally:
            publisher.close()
            broker.stop()
    return door_rate, echo_rate


# ---------------------------------------------------------------------------- to canonical.observation
class CanonicalWatch:
    """Reads canonical.observation from its current end and keeps, for the records derived from one raw
    topic, the delay from the door's receipt (``ingest_time``) to the record's Kafka timestamp."""

    def __init__(self, raw_topic: str) -> None:
        from confluent_kafka import TopicPartition

        from affluent.core.kafka import make_consumer
        from schemas.registry import Registry

        settings = load_settings()
        self.raw_topic = raw_topic
        self.registry = Registry(settings.registry)
        self.consumer = make_consumer(settings.kafka, group_id=f"bench-{uuid.uuid4().hex[:8]}")
        topic = "canonical.observation"
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = []
        for p in partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start.append(TopicPartition(topic, p, high))
        self.consumer.assign(start)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-canonical-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from schemas.registry import decode

        while not self._stop.is_set():
            msg = self.consumer.poll(0.2)
            value = msg.value() if msg is not None and not msg.error() else None
            if msg is None or value is None:
                continue
            record = decode(self.registry, value)
            if record["envelope"]["lineage"]["topic"] != self.raw_topic:
                continue
            written = msg.timestamp()[1] / 1000
            self.latencies.append(written - record["envelope"]["ingest_time"].timestamp())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


def link_bench_sensors(sensors: list[str]) -> None:
    from affluent.core.topics import CONTROL_DEVICES
    from formats.devices.registry import Link, add_link, encode_links

    producer = make_producer(load_settings().kafka)
    since = datetime(2026, 1, 1, tzinfo=UTC)
    for n, sensor in enumerate(sensors):
        links = add_link([], Link(f"{999000 + n:08d}", "1.2.250.1.71.4.2.7.99", since))
        producer.produce(CONTROL_DEVICES, encode_links(sensor, links), sensor.encode())
    if producer.flush(30):
        raise RuntimeError("the bench sensors could not be linked")


async def _paced_to_canonical(
    settings: Settings, devices: DeviceSettings, posters: LoadProcess[LoadSpec, LoadResult], duration: float
) -> tuple[LoadResult, list[float]]:
    """The paced run through its own door and raw topic, with a real normalize worker reading that topic:
    (what the posters saw, sorted delays from the door's receipt to canonical.observation)."""
    from connectors.devices.service import DeviceService
    from tests.support.devices import normalize_worker

    topic = f"bench.device.paced.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.kafka, [TopicSpec(topic, partitions=3)])
    run = uuid.uuid4().hex[:6].upper()
    sensors = [f"BENCH{run}{k}" for k in range(8)]
    await asyncio.to_thread(link_bench_sensors, sensors)
    payloads = bodies(64, PACED_BATCH, seed=1, sensors=sensors)
    service = DeviceService(
        settings.model_copy(update={"devices": devices}), CollectorRegistry(), raw_topic=topic
    )
    port = await service.start(with_telemetry=False)
    url = f"http://127.0.0.1:{port}/devices/gateway-batch"
    rate = PACED_RATE / PACED_BATCH
    try:
        with normalize_worker(topic):
            watch = CanonicalWatch(topic)
            try:
                # Until the worker has joined its group and maps, the delays would measure its start-up.
                await asyncio.to_thread(
                    posters.run, LoadSpec(url, 4, 0.0, 2.0, payloads, PACED_BATCH, rate=rate)
                )
                await asyncio.to_thread(_wait_until, lambda: len(watch.latencies) > 0, 180)
                await asyncio.to_thread(_wait_until, lambda: _quiet(watch), 120)
                watch.latencies.clear()
                paced = await asyncio.to_thread(
                    posters.run, LoadSpec(url, 4, 0.0, duration, payloads, PACED_BATCH, rate=rate)
                )
                await asyncio.to_thread(_wait_until, lambda: _quiet(watch), 60)
                return paced, sorted(watch.latencies)
            finally:
                watch.close()
    finally:
        await service.stop()


# ---------------------------------------------------------------------------- the suite
async def _measure(options: Options) -> SuiteResult:
    from connectors.devices.intake import token_hash
    from connectors.devices.service import DeviceService

    settings = load_settings()
    topic = f"bench.device.raw.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings.kafka, [TopicSpec(topic, partitions=3)])
    devices = DeviceSettings(
        port=0, metrics_port=None, tokens=[DeviceToken(sha256=token_hash(TOKEN), sender="BENCH")]
    )
    service = DeviceService(
        settings.model_copy(update={"devices": devices}), CollectorRegistry(), raw_topic=topic
    )
    payloads = bodies(16, BATCH)
    duration = options.seconds(10, 3)
    warmup = options.seconds(2, 1)
    posters: LoadProcess[LoadSpec, LoadResult] = LoadProcess(drive, "bench-device-posters")
    echo = EchoDoor()
    try:
        port = await service.start(with_telemetry=False)
        echo_port = await echo.start()
        door_spec = LoadSpec(
            f"http://127.0.0.1:{port}/devices/gateway-batch", POSTERS, warmup, duration, payloads, BATCH
        )
        door = await asyncio.to_thread(posters.run, door_spec)
        echoed = await asyncio.to_thread(
            posters.run,
            LoadSpec(
                f"http://127.0.0.1:{echo_port}/devices/gateway-batch",
                POSTERS,
                warmup,
                duration,
                payloads,
                BATCH,
            ),
        )
    finally:
        with contextlib.suppress(Exception):
            await echo.stop()
        await service.stop()
    try:
        paced, to_canonical = await _paced_to_canonical(settings, devices, posters, duration)
    finally:
        posters.close()
    mqtt_rate, mqtt_echo_rate = await _mqtt_rates(settings, int(options.seconds(3000, 600)))
    seconds = options.seconds(3, 1)
    template_rate = await asyncio.to_thread(template_only, payloads, seconds)
    kafka_rate = await asyncio.to_thread(kafka_records, topic, payloads, seconds) * BATCH
    normalize_rate = await asyncio.to_thread(normalize_only, payloads[:4], seconds)

    door_rate = door.readings / door.window_s
    echo_rate = echoed.readings / echoed.window_s
    p99_paced = percentile(paced.latencies, 99)
    rows = [
        [
            "HTTPS door, batches of 500, 8 posters (202 after Kafka acks)",
            fmt_rate(door_rate),
            "1.00×",
            fmt_ms(percentile(door.latencies, 50)),
            fmt_ms(percentile(door.latencies, 99)),
        ],
        [
            "ceiling: echo door (HTTP + posters, no work)",
            fmt_rate(echo_rate),
            fmt_ratio(door_rate / echo_rate),
            fmt_ms(percentile(echoed.latencies, 50)),
            fmt_ms(percentile(echoed.latencies, 99)),
        ],
        [
            "ceiling: template validation only (JSON + template)",
            fmt_rate(template_rate),
            fmt_ratio(door_rate / template_rate),
            "",
            "",
        ],
        [
            "ceiling: Kafka, bare producer, same records (× 500 readings)",
            fmt_rate(kafka_rate),
            fmt_ratio(door_rate / kafka_rate),
            "",
            "",
        ],
        [
            f"MQTT door, QoS 1, {MQTT_BATCH} readings per message (PUBACK after Kafka acks)",
            fmt_rate(mqtt_rate),
            "",
            "",
            "",
        ],
        [
            "ceiling: bare MQTT subscriber, same broker and publisher",
            fmt_rate(mqtt_echo_rate),
            fmt_ratio(mqtt_rate / mqtt_echo_rate),
            "",
            "",
        ],
        ["normalize: device mapper + Avro, observations/s in-process", fmt_rate(normalize_rate), "", "", ""],
        [
            f"HTTPS door paced at {PACED_RATE:,} readings/s (batches of {PACED_BATCH})",
            fmt_rate(paced.readings / paced.window_s),
            "",
            fmt_ms(percentile(paced.latencies, 50)),
            fmt_ms(p99_paced),
        ],
    ]
    p99_canonical = percentile(to_canonical, 99)
    canonical_rows = [
        [
            f"door receipt → canonical.observation, {PACED_RATE:,} readings/s, normalize worker",
            f"{len(to_canonical):,}",
            fmt_ms(percentile(to_canonical, 50)),
            fmt_ms(p99_canonical),
            fmt_ms(to_canonical[-1] if to_canonical else float("nan")),
        ]
    ]
    statuses = {k: v for k, v in door.statuses.items() if k != 202}
    return SuiteResult(
        name="devices",
        title="Telemonitoring devices: HTTPS JSON and MQTT doors",
        tables=[
            Table(
                ["what", "readings/s", "door ÷ this", "p50 ack", "p99 ack"],
                rows,
                align=["l", "r", "r", "r", "r"],
            ),
            Table(
                ["what", "observations", "p50", "p99", "max"],
                canonical_rows,
                title="Latency to the canonical topic",
                align=["l", "r", "r", "r", "r"],
            ),
        ],
        how_measured=(
            f"{POSTERS} concurrent posters in a spawned process post `gateway-batch` bodies of {BATCH} "
            f"readings flat out for {duration:g} s after {warmup:g} s of warm-up; a reading counts once its "
            "request got a 202 (the raw record is in Kafka, acks=all). The echo door, the template loop, the "
            "bare producer and the normalize loop run in the same run on the same machine. MQTT: one "
            f"publisher sends {MQTT_BATCH}-reading QoS 1 messages to a Mosquitto started for the run; the "
            "rate runs from the first publish to the last reading stored in Kafka. Latency to the canonical "
            "topic: a paced run through its own door and raw topic, read by a real normalize worker ("
            "own group); delay = the canonical record's Kafka timestamp minus the raw record's receipt time "
            "(`ingest_time`), both on this machine's clock."
        ),
        targets=[
            Target(
                "device readings/s acknowledged, HTTPS batches",
                f"≥ {TARGET:,}",
                fmt_rate(door_rate),
                door_rate >= TARGET,
            ),
            Target(
                "device readings/s stored, MQTT QoS 1 (50 per message)",
                f"≥ {TARGET:,}",
                fmt_rate(mqtt_rate),
                mqtt_rate >= TARGET,
            ),
            Target(
                f"p99 door receipt → canonical.observation at {PACED_RATE:,} readings/s",
                "≤ 1 s",
                fmt_ms(p99_canonical),
                bool(to_canonical) and p99_canonical <= 1.0,
            ),
        ],
        notes=[f"non-202 answers in the flat-out run: {statuses}"] if statuses else [],
    )


@register("devices")
def devices(options: Options) -> SuiteResult:
    return asyncio.run(_measure(options))
