"""Commit, then answer: raw records and their idempotency entries, written durably before any 2xx.

The idempotency index is a compacted topic (``control.fhir.seen``) read at start-up and tailed, the
same reader as the MLLP ACK cache (:class:`connectors.mllp.ackcache.AckCache`). Its keys are hashes —
the raw record's ``raw_id`` (sender + ``<type>/<id>/_history/<versionId>``, or the payload digest), or
the digest of an ``If-None-Exist`` query — so no resource id or search value lands in a Kafka key. Its
values are the answer given (status, location, version), replayed to a resend instead of storing again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from affluent.core.producer import DurableProducer
from connectors.mllp.ackcache import AckCache
from connectors.raw import RawMessage, RawWriter


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    location: str | None = None
    version: str | None = None
    # Digest of the stored payload: a request with the same key but other bytes is not a resend.
    # None in entries written before digests were kept (matched on their key alone).
    digest: str | None = None

    def encode(self) -> bytes:
        data = {"s": self.status, "l": self.location, "v": self.version}
        if self.digest:
            data["d"] = self.digest
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, value: bytes) -> Answer:
        data = json.loads(value)
        return cls(int(data["s"]), data.get("l"), data.get("v"), data.get("d"))


def payload_digest(payload: bytes) -> str:
    """What makes a request with a known key *the same request* (BLAKE2b-128 of its bytes)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def if_none_exist_key(sender: str, rtype: str, query: str) -> str:
    basis = f"if-none-exist|{sender}|{rtype}|{query.strip()}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()


class Committer:
    def __init__(self, producer: DurableProducer, writer: RawWriter, seen: AckCache) -> None:
        self.producer = producer
        self.writer = writer
        self.seen = seen

    def earlier(self, key: str) -> Answer | None:
        value = self.seen.get(key)
        return Answer.decode(value) if value is not None else None

    async def commit(self, messages: Sequence[RawMessage], answers: Sequence[tuple[str, Answer]]) -> None:
        """Returns once Kafka holds every record and every index entry; raises KafkaUnavailable otherwise.

        Raw records first, index entries only once Kafka holds every raw record: an entry whose raw
        record was lost (door killed between the two, or the raw write failed while the entry's
        succeeded) would answer the client's retry with a success and nothing stored. In this order a
        failure between the two only costs a duplicate raw record on the retry, which the same
        ``raw_id`` collapses downstream (the MLLP door keeps the same order).
        """
        encoded = [(key, answer.encode()) for key, answer in answers]
        await self.producer.send_all(self.writer.encoded(list(messages)))
        await self.producer.send_all([(self.seen.topic, value, key.encode()) for key, value in encoded])
        for key, value in encoded:
            self.seen.remember(key, value)
