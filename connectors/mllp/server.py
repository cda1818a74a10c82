"""The HL7 v2 MLLP door: an asyncio TCP (optionally TLS) server that commits, then acknowledges.

Pipeline per frame, in connection order: frame → validate (:mod:`connectors.mllp.intake`) → duplicate
check (:mod:`connectors.mllp.ackcache`) → persist (raw record + ACK cache entry, ``acks=all``) →
acknowledge (:mod:`connectors.mllp.ack`). **The ACK is decided here**, in :meth:`MllpServer.handle_frame`:
AA/CA is written only after Kafka's delivery reports for both records; a Kafka failure gives AR/CR.
Rejected messages get AR/AE with an ERR segment and a dead letter in ``dlq.ingest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from affluent.core.errors import KafkaUnavailable
from affluent.core.producer import DurableProducer
from affluent.core.settings import MllpSettings
from affluent.core.topics import INGEST_HL7V2_RAW
from connectors.mllp import ack as acks
from connectors.mllp.ackcache import AckCache, cache_entry, read_entry
from connectors.mllp.batch import is_batch, split_batch
from connectors.mllp.framing import Frame, FrameDecoder, FrameError, encode_frame
from connectors.mllp.intake import (
    Accepted,
    Header,
    Ignored,
    IntakePolicy,
    Rejected,
    assess,
)
from connectors.mllp.metrics import MllpMetrics
from connectors.raw import stream_key
from formats.hl7.charset import encode_for_reply
from formats.reasons import ReasonCode
from schemas.deadletter import DeadLetterWriter
from schemas.registry import AvroCodec

log = logging.getLogger(__name__)

CONTENT_TYPE = "x-application/hl7-v2+er7"


@dataclass(frozen=True, slots=True)
class Peer:
    address: str
    certificate_subject: str | None


class MllpServer:
    """Thin shell: sockets and Kafka around the pure intake/ack functions."""

    def __init__(
        self,
        settings: MllpSettings,
        producer: DurableProducer,
        raw_codec: AvroCodec,
        ack_cache: AckCache,
        dead_letters: DeadLetterWriter,
        metrics_registry: CollectorRegistry,
        raw_topic: str = INGEST_HL7V2_RAW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.raw_codec = raw_codec
        self.ack_cache = ack_cache
        self.dead_letters = dead_letters
        self.raw_topic = raw_topic
        self.clock = clock
        self.policy = IntakePolicy(
            allowed_message_types=frozenset(settings.allowed_message_types),
            default_charset=settings.default_charset,
        )
        self.metrics = MllpMetrics(metrics_registry, self.policy.allowed_message_types)
        self.metrics.ack_cache_entries.set_function(lambda: float(len(ack_cache)))
        self._in_flight: dict[str, asyncio.Future[bytes | None]] = {}
        # ACK control ids (MSH-10 of our ACKs): unique per process start, then a counter (no syscall each).
        self._ack_ids = itertools.count(1)
        self._ack_prefix = uuid.uuid4().hex[:8]
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._on_connection,
            self.settings.host,
            self.settings.port,
            ssl=tls_context(self.settings),
            limit=2**20,
            # A handshake that never ends holds a socket as a silent peer does: the same bound.
            ssl_handshake_timeout=(
                self.settings.first_byte_timeout_s if self.settings.tls_certificate else None
            ),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s", self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let connections finish the frame in hand, then close them."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # ------------------------------------------------------------------ connection
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.settings.max_connections:
            # Closed before a byte is read: a flood of connections must not take the door's tasks,
            # buffers and file descriptors from the senders already connected.
            self.metrics.connections_refused.labels("mllp", "limit").inc()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = _peer(writer)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        decoder = FrameDecoder(self.settings.max_frame_bytes)
        loop = asyncio.get_running_loop()

        def silent() -> None:  # no first byte in time: a slot of max_connections is not for holding
            self.metrics.connections_refused.labels("mllp", "timeout").inc()
            writer.close()

        # One timer per connection, re-armed per read: asyncio.wait_for would create a Task per read.
        idle = loop.call_later(self.settings.first_byte_timeout_s, silent)
        try:
            while True:
                data = await reader.read(65536)
                idle.cancel()
                idle = loop.call_later(self.settings.idle_timeout_s, writer.close)
                events = decoder.feed(data) if data else decoder.close()
                for event in events:
                    reply = await self._on_event(event, peer)
                    if reply:
                        writer.write(reply)
                        await writer.drain()
                if not data:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the peer went away; unacknowledged messages will be resent by the sender
        except asyncio.CancelledError:
            pass
        finally:
            idle.cancel()
            self.metrics.connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _on_event(self, event: Frame | FrameError, peer: Peer) -> bytes:
        if isinstance(event, FrameError):
            self.metrics.frame_errors.labels(event.code).inc()
            if event.code == "oversize":
                # Answer at once so the sender does not wait for a timeout; MSH is unknown here.
                started = time.perf_counter()
                error = acks.AckError(
                    ReasonCode.OVERSIZE.hl7_error,
                    f"frame larger than the {self.settings.max_frame_bytes} bytes allowed",
                )
                self.metrics.rejects.labels(ReasonCode.OVERSIZE).inc()
                reply = self._encode_acks(Header(), "reject", error)
                self.metrics.ack_latency.observe(time.perf_counter() - started)
                return reply
            return b""
        self.metrics.received_bytes.inc(len(event.payload))
        return await self.handle_frame(event.payload, peer)

    # ------------------------------------------------------------------ the decision
    async def handle_frame(self, payload: bytes, peer: Peer) -> bytes:
        """Process one complete frame and return the bytes to answer (framed ACKs, possibly none)."""
        started = time.perf_counter()
        try:
            if is_batch(payload):
                return await self._batch(payload, peer)
            return await self._message(payload, peer)
        finally:
            self.metrics.ack_latency.observe(time.perf_counter() - started)

    async def _message(self, payload: bytes, peer: Peer) -> bytes:
        outcome = assess(payload, self.policy)
        if isinstance(outcome, Ignored):
            self._count(outcome.header, "ignored_ack")
            return b""
        if isinstance(outcome, Accepted):
            outcome = self._check_sender(outcome, peer)
        if isinstance(outcome, Rejected):
            return await self._reject(outcome, payload, peer)
        return await self._store(outcome, peer)

    async def _batch(self, payload: bytes, peer: Peer) -> bytes:
        """Each message of an HL7 batch on its own (stored, duplicate or refused, as in its own frame),
        then one batch acknowledgement holding their ACKs (connectors/mllp/batch.py)."""
        batch = split_batch(payload)
        if isinstance(batch, Rejected):
            return await self._reject(batch, payload, peer)
        answers: list[bytes] = []
        for message in batch.messages:
            framed = await self._message(message, peer)
            answers += [chunk[1:] for chunk in framed.split(b"\x1c\r") if chunk.startswith(b"\x0b")]
        h, now = batch.header, self.clock()
        head = ""
        if batch.file_control_id is not None:
            head += acks.build_batch_header("FHS", h, now, self._ack_id(), batch.file_control_id, *self._us())
        head += acks.build_batch_header("BHS", h, now, self._ack_id(), batch.batch_control_id, *self._us())
        tail = acks.build_batch_trailer("BTS", len(answers), h)
        if batch.file_control_id is not None:
            tail += acks.build_batch_trailer("FTS", 1, h)
        return encode_frame(
            encode_for_reply(head, h.declared_charset, h.codec)
            + b"".join(answers)
            + encode_for_reply(tail, h.declared_charset, h.codec)
        )

    def _ack_id(self) -> str:
        return f"{self._ack_prefix}{next(self._ack_ids):012d}"

    def _us(self) -> tuple[str, str]:
        return self.settings.receiving_application, self.settings.receiving_facility

    def _check_sender(self, accepted: Accepted, peer: Peer) -> Accepted | Rejected:
        allowed = self.settings.tls_allowed_subjects.get(accepted.header.sending_facility)
        if self.settings.tls_allowed_subjects and (
            allowed is None or peer.certificate_subject not in allowed
        ):
            return Rejected(
                ReasonCode.SENDER_NOT_ALLOWED,
                "the client certificate is not allowed to send for this facility",
                "MSH-4",
                "error",
                accepted.header,
            )
        return accepted

    async def _store(self, accepted: Accepted, peer: Peer) -> bytes:
        key = accepted.duplicate_key
        reused = False
        cached = self.ack_cache.get(key)
        if cached is not None:
            digest, reply = read_entry(cached)
            if digest is not None and digest != accepted.digest:
                # Same (facility, MSH-10), other content: a reset counter or a reused id, not a resend.
                # Stored as a new message; its raw_id and event ids carry its digest, so nothing
                # collapses. Its entry goes under its own key, so the first message's stays.
                reused = True
                key = f"{key}|{accepted.digest}"
                cached = self.ack_cache.get(key)
                reply = read_entry(cached)[1] if cached is not None else b""
            if cached is not None:
                self._count(accepted.header, "duplicate")
                self._count_acks(reply)
                return reply
        flight = f"{accepted.duplicate_key}|{accepted.digest}"
        pending = self._in_flight.get(flight)
        if pending is not None:  # the same message on another connection, right now
            result = await asyncio.shield(pending)
            if result is not None:
                self._count(accepted.header, "duplicate")
                self._count_acks(result)
                return result
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._in_flight[flight] = future
        stored: bytes | None = None
        try:
            reply = self._encode_acks(accepted.header, "accepted", None)
            record = self._raw_record(accepted, peer)
            sender = stream_key(accepted.header.sending_facility, accepted.header.sending_application)
            # The raw record must be durable *before* the ACK-cache entry is written: the two live in
            # different partitions (often on different brokers), and an entry whose raw record was lost
            # (door killed, or the raw write failed while the entry's succeeded) would make the resend
            # look like a duplicate and be answered AA with nothing stored. In this order a crash
            # between the two costs at most a second raw copy of the same raw_id, which collapses
            # downstream. Found by the fault suite (tests/reliability).
            await self.producer.send(self.raw_topic, self.raw_codec.encode(record), sender)
            entry = cache_entry(accepted.digest, reply)
            self.ack_cache.remember(key, entry)
            # The entry only spares a resend a second raw copy (which would collapse downstream by
            # raw_id anyway): the sender's ACK does not wait for it, and a lost one is counted.
            try:
                self.producer.send_nowait(
                    self.ack_cache.topic, entry, key.encode("utf-8"), self._ack_entry_lost
                )
            except (BufferError, KafkaUnavailable):
                self._ack_entry_lost()
            stored = reply
            self._count(accepted.header, "stored")
            if reused:  # counted once per different message: its resends are duplicates
                self.metrics.control_id_reuse.inc()
            return reply
        except KafkaUnavailable:
            self._count(accepted.header, "kafka_unavailable")
            error = acks.AckError(
                ReasonCode.STORAGE_UNAVAILABLE.hl7_error,
                "message not stored: the hub's storage is unavailable, resend later",
            )
            return self._encode_acks(accepted.header, "reject", error)
        finally:
            future.set_result(stored)
            self._in_flight.pop(flight, None)

    async def _reject(self, rejected: Rejected, payload: bytes, peer: Peer) -> bytes:
        self.metrics.rejects.labels(rejected.reason_code).inc()
        self.metrics.dead_letters.labels("ingest", rejected.reason_code).inc()
        self._count(rejected.header, "rejected")
        await self.dead_letters.write(
            stage="ingest",
            reason_code=rejected.reason_code,
            reason=rejected.reason,
            location=rejected.location,
            payload=payload,
            content_type=CONTENT_TYPE,
            source_facility=rejected.header.sending_facility,
            source_application=rejected.header.sending_application,
            connector="mllp",
            protocol="hl7v2",
        )
        error = acks.AckError(rejected.hl7_error, rejected.reason, rejected.location)
        return self._encode_acks(
            rejected.header, "error" if rejected.severity == "error" else "reject", error
        )

    # ------------------------------------------------------------------ helpers
    def _ack_entry_lost(self) -> None:
        self.metrics.ack_cache_lost.inc()

    def _encode_acks(self, header: Header, outcome: acks.Outcome, error: acks.AckError | None) -> bytes:
        now = self.clock()
        out = bytearray()
        for code in acks.ack_codes(header, outcome):
            text = acks.build_ack(
                header,
                code,
                control_id=self._ack_id(),
                now=now,
                our_application=self.settings.receiving_application,
                our_facility=self.settings.receiving_facility,
                error=error if code not in ("AA", "CA") else None,
            )
            out += encode_frame(encode_for_reply(text, header.declared_charset, header.codec))
            self.metrics.acks.labels(code).inc()
        return bytes(out)

    def _count_acks(self, framed: bytes) -> None:
        for chunk in framed.split(b"\x1c\r"):
            pos = chunk.find(b"MSA")
            if pos >= 0 and len(chunk) >= pos + 6:
                self.metrics.acks.labels(chunk[pos + 4 : pos + 6].decode("ascii", "replace")).inc()

    def _count(self, header: Header, outcome: str) -> None:
        label = (
            self.metrics.type_label(header.message_type, header.trigger_event)
            if header.message_type
            else "none"
        )
        self.metrics.messages.labels(label, outcome).inc()
        self.metrics.senders.seen("mllp", header.sending_facility)

    def _raw_record(self, accepted: Accepted, peer: Peer) -> dict[str, Any]:
        h = accepted.header
        attributes = {
            "ack_mode": "enhanced" if h.enhanced_mode else "original",
            "content_digest": accepted.digest,  # part of the event ids: see RawContext.from_raw
        }
        if peer.certificate_subject:
            attributes["tls_subject"] = peer.certificate_subject
        if h.version:
            attributes["hl7_version"] = h.version
        return {
            "raw_id": accepted.raw_id,
            "protocol": "hl7v2",
            "connector": "mllp",
            "source_facility": h.sending_facility,
            "source_application": h.sending_application,
            "message_id": h.control_id,
            "message_type": h.type_label,
            "peer": peer.address,
            "received_at": self.clock(),
            "content_type": CONTENT_TYPE,
            "declared_charset": accepted.decoded.declared,
            "charset_mismatch": accepted.decoded.mismatch,
            "payload": accepted.raw,
            "attributes": attributes,
        }


def tls_context(settings: MllpSettings) -> ssl.SSLContext | None:
    """Server TLS context: the one every door builds (affluent/core/tls.py), key file checked first."""
    from affluent.core.tls import server_context

    if settings.tls_certificate is None or settings.tls_key is None:
        return None
    return server_context(
        settings.tls_certificate,
        settings.tls_key,
        key_setting="AFFLUENT_MLLP__TLS_KEY",
        client_ca=settings.tls_client_ca,
        require_client_certificate=settings.tls_require_client_certificate,
    )


def _peer(writer: asyncio.StreamWriter) -> Peer:
    from affluent.core.tls import subject_cn

    address = writer.get_extra_info("peername")
    text = f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else "unknown"
    return Peer(text, subject_cn(writer.get_extra_info("peercert")))
