"""Incremental MLLP frame decoder.

MLLP wraps each HL7 v2 message as ``0x0B payload 0x1C 0x0D``. The decoder is pure (no sockets, no
clock, no logging) so that every odd behaviour of real interface engines -- garbage between frames,
frames split across or packed into TCP reads, a forgotten trailing CR, oversized frames, dropped
connections -- can be tested exhaustively without a network, and so that the server decides on its
own what to log, NAK or disconnect.

Errors are reported as :class:`FrameError` values carrying a size, never the bytes themselves:
discarded bytes may be fragments of a message with patient data, and error events tend to end up in
logs and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "CARRIAGE_RETURN",
    "END_BLOCK",
    "START_BLOCK",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameEvent",
    "encode_frame",
]

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\x0d"

_CR: Final = 0x0D
_DEFAULT_MAX_FRAME_BYTES: Final = 10 * 1024 * 1024

# Decoder states. Plain ints rather than an Enum: the state is tested on every feed() and the
# attribute lookup of an Enum member is measurably slower in this hot path.
_IDLE: Final = 0  # between frames: looking for 0x0B, counting garbage
_IN_FRAME: Final = 1  # inside a frame: ``_buf`` holds the payload received so far
_AWAIT_CR: Final = 2  # 0x1C was the last byte of a feed: ``_buf`` holds a complete payload
_SKIPPING: Final = 3  # after an oversize frame: discarding silently until the next 0x0B


def encode_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in MLLP framing.

    The payload is not checked for 0x0B/0x1C: HL7 v2 text never contains them, and checking would
    cost a scan per outgoing ACK for a condition that only a programming error can produce.
    """
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame. ``payload`` excludes the framing bytes."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameError:
    """A framing anomaly.

    ``code`` is one of ``"oversize"``, ``"garbage"``, ``"unterminated"``, ``"missing_cr"``.
    ``size`` is a byte count, deliberately not the bytes: they may contain patient data.
    """

    code: str
    size: int


FrameEvent = Frame | FrameError

_MISSING_CR: Final = FrameError("missing_cr", 0)


class FrameDecoder:
    """Turns a byte stream, chunked arbitrarily by TCP, into frames and framing errors.

    Decisions, and why:

    * **Oversize** (payload longer than ``max_frame_bytes``): exactly one ``FrameError("oversize",
      n)`` is emitted as soon as the limit is crossed, so the server can NAK at once instead of
      waiting for the end of a frame that may never come; ``n`` is the payload size seen at that
      moment (at least ``max_frame_bytes + 1``; it depends on how TCP chunked the stream, so it is
      diagnostic only). The decoder then discards everything up to the next 0x0B without buffering
      it, which bounds memory and resynchronises on the next frame.
    * **Missing CR** (0x1C followed by anything but 0x0D): the frame is delivered anyway, followed by
      ``FrameError("missing_cr", 0)``. Many engines are this sloppy and rejecting their messages
      would only stall the flow; the error lets the server count them. The byte after 0x1C is
      processed normally, since it is often the next frame's 0x0B. When 0x1C is the last byte of a
      feed, the frame is delivered at once (a sender that never sends the CR waits for our ACK and
      would otherwise deadlock); the next byte then decides: a CR is swallowed, anything else
      reports ``missing_cr``.
    * **Garbage** (bytes other than 0x0B between frames): one ``FrameError("garbage", n)`` per run,
      emitted when the run ends (next 0x0B, or :meth:`close`). Reporting per run rather than per
      chunk keeps the count independent of TCP segmentation and keeps logs short. Lone CR/LF
      between frames is common (engines terminating frames with CRLF or sending keep-alive
      newlines) and harmless, so it is ignored and not counted in ``n``.
    * **Unterminated** (0x0B while inside a frame that has seen no 0x1C): the sender evidently gave
      up on the previous frame and restarted; the partial payload is discarded with
      ``FrameError("unterminated", n)`` and the new frame starts. At :meth:`close`, a partial frame
      is reported the same way.

    Performance: scanning uses ``bytes.find`` (memchr) rather than per-byte Python loops. A partial
    frame's buffered bytes are known to contain neither 0x0B nor 0x1C, so each new chunk is scanned
    exactly once -- a large frame arriving in many small chunks costs linear, not quadratic, time.
    Complete frames found inside a single chunk are sliced straight out of it without going through
    the buffer.
    """

    __slots__ = ("_buf", "_garbage", "_max", "_state")

    def __init__(self, max_frame_bytes: int = _DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            # A zero or negative limit is a configuration mistake, not a policy: fail at startup
            # rather than rejecting every message.
            raise ValueError("max_frame_bytes must be positive")
        self._max = max_frame_bytes
        self._buf = bytearray()
        self._state = _IDLE
        self._garbage = 0

    @property
    def buffered(self) -> int:
        """Bytes currently held; never more than ``max_frame_bytes`` (garbage and skipped oversize
        bytes are counted, not stored), so a hostile or broken peer cannot exhaust memory."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Consume the next chunk of the stream and return the events it completes, in order."""
        events: list[FrameEvent] = []
        n = len(data)
        if not n:
            return events
        pos = 0
        state = self._state
        if state == _IN_FRAME:
            pos = self._continue_frame(data, events)
            if pos < 0:
                return events
        elif state == _AWAIT_CR:
            if data[0] == _CR:
                pos = 1
            else:
                events.append(_MISSING_CR)
            self._state = _IDLE
        elif state == _SKIPPING:
            pos = data.find(START_BLOCK)
            if pos < 0:
                return events
            self._state = _IDLE
        self._scan_idle(data, pos, events)
        return events

    def close(self) -> list[FrameEvent]:
        """Signal end of stream; report what was left pending and reset the decoder for reuse.

        A frame whose 0x1C was the last byte received was already delivered; only its missing CR is
        reported here.
        """
        events: list[FrameEvent] = []
        if self._state == _IN_FRAME:
            events.append(FrameError("unterminated", len(self._buf)))
        elif self._state == _AWAIT_CR:
            events.append(_MISSING_CR)
        if self._garbage:
            events.append(FrameError("garbage", self._garbage))
        self._buf = bytearray()  # release the memory, not just the length
        self._state = _IDLE
        self._garbage = 0
        return events

    def _continue_frame(self, data: bytes, events: list[FrameEvent]) -> int:
        """Extend the buffered partial frame with ``data``.

        Returns the position where idle scanning must resume, or -1 when ``data`` is used up (the
        state is then already updated).
        """
        n = len(data)
        buf = self._buf
        fs = data.find(END_BLOCK)
        vt = data.find(START_BLOCK, 0, n if fs < 0 else fs)
        stop = vt if vt >= 0 else (fs if fs >= 0 else n)
        size = len(buf) + stop
        if size > self._max:
            events.append(FrameError("oversize", size))
            self._buf = bytearray()
            if vt >= 0:
                self._state = _IDLE
                return vt
            self._state = _SKIPPING
            resync = data.find(START_BLOCK, stop)
            if resync < 0:
                return -1
            self._state = _IDLE
            return resync
        if vt >= 0:
            events.append(FrameError("unterminated", size))
            buf.clear()
            self._state = _IDLE
            return vt
        if fs < 0:
            buf += data
            return -1
        buf += memoryview(data)[:fs]
        events.append(Frame(bytes(buf)))
        buf.clear()
        if fs + 1 == n:
            self._state = _AWAIT_CR
            return -1
        self._state = _IDLE
        if data[fs + 1] == _CR:
            return fs + 2
        events.append(_MISSING_CR)
        return fs + 1

    def _scan_idle(self, data: bytes, pos: int, events: list[FrameEvent]) -> None:
        """Scan ``data`` from ``pos``, starting between frames, to its end."""
        n = len(data)
        find = data.find
        limit = self._max
        append = events.append
        # Position of the first 0x1C at or after the current frame body; -1 means "none in the rest
        # of data". Cached across iterations so a run of 0x0B without any 0x1C does not rescan the
        # whole chunk for each 0x0B (which would be quadratic).
        fs = -2
        while pos < n:
            vt = find(START_BLOCK, pos)
            if vt < 0:
                self._count_garbage(data, pos, n)
                return
            if vt > pos:
                self._count_garbage(data, pos, vt)
            if self._garbage:
                append(FrameError("garbage", self._garbage))
                self._garbage = 0
            body = vt + 1
            if fs != -1 and fs < body:
                fs = find(END_BLOCK, body)
            stop = n if fs < 0 else fs
            nxt = find(START_BLOCK, body, stop)
            if nxt >= 0:
                stop = nxt
            size = stop - body
            if size > limit:
                append(FrameError("oversize", size))
                if nxt >= 0:
                    pos = nxt
                    continue
                resync = find(START_BLOCK, stop)
                if resync < 0:
                    self._state = _SKIPPING
                    return
                pos = resync
                continue
            if nxt >= 0:
                append(FrameError("unterminated", size))
                pos = nxt
                continue
            if fs < 0:
                self._buf += memoryview(data)[body:]
                self._state = _IN_FRAME
                return
            after = fs + 1
            append(Frame(data[body:fs]))
            if after == n:
                self._state = _AWAIT_CR
                return
            if data[after] == _CR:
                pos = after + 1
            else:
                append(_MISSING_CR)
                pos = after

    def _count_garbage(self, data: bytes, start: int, end: int) -> None:
        """Add the non-CR/LF bytes of ``data[start:end]`` to the current garbage run, without
        copying them: only the count is ever needed."""
        self._garbage += end - start - data.count(b"\r", start, end) - data.count(b"\n", start, end)
