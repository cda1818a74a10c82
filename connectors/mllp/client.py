"""A minimal MLLP sender: how an interface engine talks to the door (used by the demo, tests and bench)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence

from connectors.mllp.framing import Frame, FrameDecoder, encode_frame
from formats.hl7 import er7


def ack_code(ack_text: str) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    msg = er7.parse(ack_text)
    return msg.get("MSA-1") or "", msg.get("MSA-2") or ""


class MllpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, host: str, port: int, ssl_ctx: ssl.SSLContext | None = None) -> MllpClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, payload: bytes) -> None:
        await self.send_raw(encode_frame(payload))

    async def receive(self, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        """Wait for `count` ACK frames."""

        async def fill() -> None:
            while len(self.pending) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed by the hub")
                self.pending.extend(e.payload for e in self.decoder.feed(data) if isinstance(e, Frame))

        await asyncio.wait_for(fill(), timeout)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    async def request(self, payload: bytes, acks: int = 1, timeout: float = 30.0) -> list[str]:
        """Send one message and wait for its ACK(s), decoded as latin-1 (MSA fields are ASCII)."""
        await self.send(payload)
        return [a.decode("latin-1") for a in await self.receive(acks, timeout)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def send_all(host: str, port: int, payloads: Sequence[bytes], senders: int = 4) -> list[str]:
    """Send payloads over `senders` connections (message i on connection i mod senders), one ACK at a time
    per connection as MLLP requires; returns the MSA-1 code of each message, in input order."""
    codes = [""] * len(payloads)

    async def lane(lane_no: int) -> None:
        client = await MllpClient.connect(host, port)
        try:
            for i in range(lane_no, len(payloads), senders):
                (reply,) = await client.request(payloads[i])
                codes[i] = ack_code(reply)[0]
        finally:
            await client.close()

    await asyncio.gather(*(lane(n) for n in range(senders)))
    return codes
