"""A tiny Chrome DevTools Protocol client: a real headless Chromium, driven over its WebSocket.

Enough to test server-rendered pages as a user meets them — navigate, read the text, fill and submit a
form, take a screenshot — without Selenium or Playwright (Debian's ``chromium`` is all it needs;
``scripts/system-deps`` installs it). One browser per test, its profile in a temporary folder, so
cookies never leak from one test to the next.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

LOAD_TIMEOUT_S = 120.0  # a console page may read Kafka for a while on a busy machine


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class CdpError(RuntimeError):
    pass


class Page:
    """One page target: commands by id, events to whoever waits for them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                for future in self._waiting.pop(data.get("method", ""), []):
                    if not future.done():
                        future.set_result(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        await self._ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, LOAD_TIMEOUT_S)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    def expect(self, event: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``event``: ask for it *before* the command that causes it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event, []).append(future)
        return future

    async def navigate(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"{url}: {result['errorText']}")
        await asyncio.wait_for(loaded, LOAD_TIMEOUT_S)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]}: {thrown}")
        return result.get("result", {}).get("value")

    async def text(self) -> str:
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def submit(self, form: str, fields: dict[str, str | bool]) -> None:
        """Fill ``fields`` of the form matched by the CSS selector ``form`` and submit it as a click on
        its button would (constraint validation included), then wait for the next page."""
        sets = []
        for name, value in fields.items():
            target = f"f.elements[{json.dumps(name)}]"
            if isinstance(value, bool):
                sets.append(f"{target}.checked = {json.dumps(value)};")
            else:
                sets.append(f"{target}.value = {json.dumps(value)};")
        loaded = self.expect("Page.loadEventFired")
        await self.evaluate(
            f"(() => {{ const f = document.querySelector({json.dumps(form)}); {' '.join(sets)} "
            "f.requestSubmit(); })()"
        )
        await asyncio.wait_for(loaded, LOAD_TIMEOUT_S)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _port(profile: Path) -> int | None:
    """Chromium's debugging port, once it wrote it (first line of ``DevToolsActivePort``)."""
    found = profile / "DevToolsActivePort"
    text = found.read_text() if found.exists() else ""
    return int(text.split()[0]) if text.strip() else None


@contextlib.asynccontextmanager
async def browser(profile: Path, width: int = 1200, height: int = 800) -> AsyncIterator[Page]:
    """A headless Chromium with one blank page of ``width`` × ``height``, stopped on exit."""
    binary = chromium()
    if binary is None:
        raise CdpError("no chromium here: scripts/system-deps installs Debian's chromium")
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while (port := await asyncio.to_thread(_port, profile)) is None:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise CdpError(f"chromium did not start (exit code {proc.returncode})")
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
            page = Page(ws)
            try:
                await page.send("Page.enable")
                await page.send("Runtime.enable")
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
            finally:
                await page.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
