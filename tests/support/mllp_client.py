"""A minimal MLLP sender for tests and benchmarks: the way an interface engine talks to the hub."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from pathlib import Path

from connectors.hl7 import er7
from connectors.mllp.framing import Frame, FrameDecoder, encode_frame

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "hl7"


def with_control_id(message: bytes, control_id: str | None = None) -> tuple[bytes, str]:
    """Give a message a fresh MSH-10 (bytes-level, so its declared charset is kept)."""
    control_id = control_id or uuid.uuid4().hex[:20]
    end = message.find(b"\r")
    msh, rest = (message, b"") if end < 0 else (message[:end], message[end:])
    fs = msh[3:4]
    fields = msh.split(fs)
    while len(fields) < 10:
        fields.append(b"")
    fields[9] = control_id.encode("ascii")
    return fs.join(fields) + rest, control_id


def control_id_of_ack(text: str) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    msg = er7.parse(text)
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
        await self.send(payload)
        return [a.decode("latin-1") for a in await self.receive(acks, timeout)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
