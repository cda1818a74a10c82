"""What the synthetic hospital's channels exchange with the simulator: one message out, one answer back.

Kept apart from :mod:`affluent.sim.simulate` so that each channel module (MLLP, FHIR, devices) can build
its messages without importing the simulator that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to send: which channel and lane carry it, and the raw id its door will store it under."""

    channel: str  # mllp | fhir | devices_http | devices_mqtt
    lane: int
    payload: bytes
    raw_id: str | None  # None when the door will refuse it (never stored)
    label: str  # message kind, for the summary (no content)
    target: str = ""  # where on the door: FHIR resource path, device template, MQTT topic


@dataclass(frozen=True, slots=True)
class Answer:
    code: str
    acknowledged: bool


class Channel(Protocol):
    """A protocol the hospital speaks to a door; one instance per lane (each lane is stop-and-wait)."""

    async def send(self, message: Outbound) -> Answer: ...

    async def close(self) -> None: ...


class HttpLane:
    """One keep-alive HTTP connection posting with a bearer token: the shell of the FHIR and device
    HTTP channels, which differ only in what counts as acknowledged. Create it inside the event loop."""

    def __init__(self, token: str, content_type: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(url, data=body, headers=self.headers) as response:
            return int(response.status), await response.read()

    async def close(self) -> None:
        await self.session.close()
