"""Connection caps and slow-start timeouts for the doors' listening sockets.

Neither asyncio nor aiohttp bounds how many connections a server holds, nor how long a new one may
take to say anything: aiohttp has no header timeout at all, so a peer that connects and sends one byte
a minute holds a socket and a handler for ever, and a few thousand such peers exhaust file descriptors.
So every door's listening socket gets a :class:`ConnectionGate` between the transport and the door's
protocol:

* past ``limit`` open connections, a new one is closed at once (an HTTP door first writes a bare 503
  with ``Retry-After``: clients retry) and counted in ``affluent_connections_refused_total``;
* a connection that has not finished its first request's headers (HTTP) or sent its first byte (MLLP)
  within the timeout is closed and counted too. Later requests on a keep-alive connection are bounded
  by aiohttp's ``keepalive_timeout`` (``idle_timeout_s``), which closes a connection idle between
  requests, however slowly bytes of a next request trickle in.

Connections are counted once their TLS handshake is done (the app protocol sees them only then); the
handshake itself is bounded by ``ssl_handshake_timeout``, set to the same timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from affluent.core.metrics import shared
from affluent.core.settings import ConnectionLimits

HTTP_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
)
# The end of a request's headers; llhttp also takes bare LFs.
END_OF_HEADERS: Final = (b"\r\n\r\n", b"\n\n")


def refused_connections(registry: CollectorRegistry) -> Counter:
    """Shared per registry: ``affluent run`` and tests host several doors on one."""
    name = "affluent_connections_refused"
    return shared(
        registry,
        name,
        lambda: Counter(
            name,
            "Connections a door closed before serving them: over its connection cap (limit) or too slow "
            "to send its first request or byte (timeout)",
            ["door", "reason"],
            registry=registry,
        ),
    )


class ConnectionGate:
    """Counts one listener's open connections and wraps each new protocol (see the module docstring)."""

    def __init__(
        self,
        limit: int,
        start_timeout_s: float | None,
        refused: Callable[[str], None],
        refusal: bytes = b"",
        start_done: tuple[bytes, ...] = END_OF_HEADERS,
    ) -> None:
        self.limit = limit
        self.start_timeout_s = start_timeout_s
        self.refused = refused
        self.refusal = refusal
        self.start_done = start_done  # bytes that end the slow-start window; empty: any byte
        self.open = 0

    def __call__(self, inner: asyncio.BaseProtocol) -> asyncio.Protocol:
        return _Gated(self, inner)


class _Gated(asyncio.Protocol):
    """Forwards everything to the door's protocol, once admitted; a refused one never sees a byte."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.BaseProtocol) -> None:
        self._gate = gate
        self._inner: Any = inner
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        gate = self._gate
        if gate.open >= gate.limit:
            gate.refused("limit")
            if gate.refusal and isinstance(transport, asyncio.WriteTransport):
                transport.write(gate.refusal)
            transport.close()
            return
        gate.open += 1
        self._admitted = True
        if gate.start_timeout_s is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(gate.start_timeout_s, self._too_slow, transport)
        self._inner.connection_made(transport)

    def _too_slow(self, transport: asyncio.BaseTransport) -> None:
        self._timer = None
        self._gate.refused("timeout")
        transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is not None:
            done = self._gate.start_done
            seen = self._tail + data
            if not done or any(marker in seen for marker in done):
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return bool(self._inner.eof_received()) if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self._admitted = False
            self._gate.open -= 1
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class LimitedSite(web.BaseSite):
    """aiohttp's TCPSite, with each connection passed through a :class:`ConnectionGate`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._gate = gate
        self._handshake_timeout_s = handshake_timeout_s
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout_s}
        listener = await asyncio.get_running_loop().create_server(
            lambda: self._gate(server()), self._host, self._port, **tls
        )
        self._server = listener
        if listener.sockets:
            self.bound_port = int(listener.sockets[0].getsockname()[1])


async def serve_limited(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits,
    refused: Callable[[str], None],
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Like :func:`affluent.core.telemetry.serve_app` (no access log), within ``limits``: returns the
    runner (``cleanup()`` stops it) and the port really bound."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.idle_timeout_s,
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    gate = ConnectionGate(limits.max_connections, limits.header_timeout_s, refused, HTTP_REFUSAL)
    site = LimitedSite(runner, host, port, gate, ssl_context, limits.header_timeout_s)
    await site.start()
    return runner, site.bound_port
