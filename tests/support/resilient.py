"""An MLLP sender that behaves like a hospital interface engine under faults.

Each lane owns its patients and sends their messages in order, one in flight: it resends the same
message (same MSH-10) after a negative ACK, a timeout or a broken connection, until it gets AA/CA,
and only then moves on. That is what makes "every acknowledged message arrives" and "a patient's
events stay in order" checkable: the hub's duplicate detection must absorb the resends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from connectors.mllp.client import MllpClient, ack_code
from connectors.mllp.framing import encode_frame


@dataclass
class SenderLog:
    acked: list[bytes] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # AA, CA, AR, CR, AE, timeout, disconnected


async def send_lane(
    host: str,
    port: Callable[[], int],
    payloads: Sequence[bytes],
    log: SenderLog,
    timeout_s: float = 10.0,
    pause_s: float = 0.0,
    give_up_after_s: float = 180.0,
) -> None:
    """Send ``payloads`` in order; ``port`` is asked again at each reconnection (a restarted door may
    listen elsewhere in tests)."""
    client: MllpClient | None = None
    loop = asyncio.get_running_loop()
    try:
        for payload in payloads:
            started = loop.time()
            while True:
                if loop.time() - started > give_up_after_s:
                    raise AssertionError("a message was never acknowledged")
                try:
                    if client is None:
                        client = await MllpClient.connect(host, port())
                    (reply,) = await client.request(payload, timeout=timeout_s)
                    code = ack_code(reply)[0]
                except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                    log.outcomes["timeout" if isinstance(exc, asyncio.TimeoutError) else "disconnected"] += 1
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.close()
                    client = None
                    await asyncio.sleep(0.5)
                    continue
                log.outcomes[code] += 1
                if code in ("AA", "CA"):
                    log.acked.append(payload)
                    break
                await asyncio.sleep(0.5)  # AR/CR/AE: the hub could not store it; resend later
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


async def cut_before_ack(host: str, port: int, payload: bytes, log: SenderLog) -> None:
    """Write one framed message and close the connection without reading the ACK, as an interface
    engine whose socket dies mid-exchange: the door receives the whole frame (a FIN follows the data,
    not a reset that could discard it) but its answer finds nobody."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(encode_frame(payload))
    await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    log.outcomes["cut before ACK"] += 1
