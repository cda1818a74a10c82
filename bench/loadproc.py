"""A load generator in a spawned process, so that its Python work never shares the measured server's GIL.

The parent sends load specs through a pipe; the child runs ``drive(spec)`` on its own event loop and
sends back the result (or the failure, which the parent raises). Shared by the MLLP and device suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar, cast

Spec = TypeVar("Spec")
Result = TypeVar("Result")


def _main(conn: Connection, drive: Callable[[Any], Awaitable[Any]]) -> None:
    """Entry point of the child: run the specs it is sent, until it is sent None."""
    while True:
        spec = conn.recv()
        if spec is None:
            break
        try:
            conn.send(asyncio.run(drive(spec)))  # type: ignore[arg-type]
        except Exception as exc:  # reported to the parent, which raises it
            conn.send(RuntimeError(f"load process failed: {type(exc).__name__}: {exc}"))


class LoadProcess(Generic[Spec, Result]):
    """``drive`` must be a module-level coroutine function (it is pickled by reference)."""

    def __init__(self, drive: Callable[[Spec], Awaitable[Result]], name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_main, args=(child, drive), name=name, daemon=True)
        self._process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def run(self, spec: Spec) -> Result:
        self._conn.send(spec)
        answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return cast(Result, answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
