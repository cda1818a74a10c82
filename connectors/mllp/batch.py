"""HL7 v2 batches over MLLP: a frame holding FHS/BHS … MSH … MSH … BTS/FTS is a set of messages.

HL7 v2.5 §2.10.3 lets a sender wrap messages in a batch (BHS … BTS), optionally inside a file (FHS …
FTS). Before this module such a frame was refused whole as unparsable. Each message of a batch is
now judged, stored and dead-lettered on its own, exactly as if it had come in its own frame (its own
raw record with its own bytes, its own duplicate check); the sender gets **one** answer, a batch
acknowledgement: our BHS (BHS-12 = the sender's BHS-11), one ACK per message that asks for one, our
BTS with the count, wrapped in FHS/FTS when the sender used them.

Pure: splitting works on the frame's bytes, so every message keeps the exact bytes it was sent with.
An envelope that does not hold together (BTS-1 different from the messages present, a second BHS,
segments outside a message) refuses the whole batch with ``bad_batch``: a count that does not match
is how a truncated batch shows, and storing half of it would be worse than asking for it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.mllp.intake import Header, Rejected, read_header, salvage_header
from formats.hl7 import er7
from formats.reasons import ReasonCode

_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(frozen=True, slots=True)
class Batch:
    """The envelope's fields an answer needs, and each message's bytes."""

    header: Header  # from BHS (or FHS when there is no BHS): delimiters, parties, charset
    batch_control_id: str = ""  # BHS-11, echoed in our BHS-12
    file_control_id: str | None = None  # FHS-11 when the batch came in a file, echoed in our FHS-12
    messages: list[bytes] = field(default_factory=list)


def is_batch(payload: bytes) -> bool:
    head = payload[3:] if payload.startswith(b"\xef\xbb\xbf") else payload
    return head.lstrip(b"\r\n\t ")[:3] in (b"FHS", b"BHS")


def _segments(payload: bytes) -> list[tuple[int, bytes]]:
    """(start offset, segment id) of every segment: a segment starts the payload or follows CR/LF."""
    found: list[tuple[int, bytes]] = []
    start = 0
    size = len(payload)
    while start < size:
        while start < size and payload[start] in b"\r\n":
            start += 1
        if start >= size:
            break
        found.append((start, payload[start : start + 3]))
        ends = [p for p in (payload.find(b"\r", start), payload.find(b"\n", start)) if p >= 0]
        start = min(ends) if ends else size
    return found


def _line(payload: bytes, start: int) -> bytes:
    ends = [p for p in (payload.find(b"\r", start), payload.find(b"\n", start)) if p >= 0]
    return payload[start : min(ends) if ends else len(payload)]


def _envelope_header(payload: bytes, start: int) -> tuple[Header, str] | None:
    """An FHS/BHS segment read as if it were an MSH (the fields share their numbering, xHS-1 to
    xHS-12), and its control id, xHS-11."""
    line = b"MSH" + _line(payload, start)[3:]
    for codec in ("utf-8", "latin-1"):
        try:
            parsed = er7.parse(line.decode(codec))
        except (UnicodeDecodeError, er7.Er7Error):
            continue
        return read_header(parsed, codec), parsed.segments[0].value(11) or ""
    return None


def _count(payload: bytes, start: int, header: Header) -> str:
    """xTS-1, the count the sender declares (empty when not valued)."""
    parts = _line(payload, start).decode("latin-1").split(header.delimiters.field)
    return parts[1].split(header.delimiters.component)[0].strip() if len(parts) > 1 else ""


def split_batch(payload: bytes) -> Batch | Rejected:
    """The batch in one frame, or why it is refused whole (never raises)."""
    segments = _segments(payload)
    names = [name for _, name in segments]

    def refuse(reason: str, location: str) -> Rejected:
        return Rejected(ReasonCode.BAD_BATCH, reason, location, header=salvage_header(payload))

    if names.count(b"BHS") > 1 or names.count(b"FHS") > 1:
        return refuse("one batch per frame: send each batch in its own MLLP frame", "BHS")
    if names.count(b"BTS") > names.count(b"BHS") or names.count(b"FTS") > names.count(b"FHS"):
        return refuse("a batch trailer without its header", "BTS")
    where = {name: start for start, name in reversed(segments)}  # first occurrence of each id
    read = _envelope_header(payload, where.get(b"BHS", where.get(b"FHS", 0)))
    if read is None:
        return refuse("the batch header does not declare usable delimiters", "BHS")
    header, batch_control_id = read
    file_control_id = None
    if b"FHS" in where:
        file_read = _envelope_header(payload, where[b"FHS"])
        file_control_id = file_read[1] if file_read is not None else ""
    messages: list[bytes] = []
    current: int | None = None
    for index, (start, name) in enumerate(segments):
        if name == b"MSH":
            if current is not None:
                messages.append(payload[current:start])
            current = start
        elif name in _ENVELOPE:
            if current is not None:
                messages.append(payload[current:start])
                current = None
            declared = _count(payload, start, header) if name in (b"BTS", b"FTS") else ""
            expected = len(messages) if name == b"BTS" else names.count(b"BHS")
            if declared and (not declared.isdigit() or int(declared) != expected):
                return refuse(
                    f"{name.decode()}-1 declares {declared[:6]!r}, the frame holds {expected}",
                    f"{name.decode()}-1",
                )
        elif current is None:
            return refuse("a segment outside any message of the batch", f"segment {index + 1}")
    if current is not None:
        messages.append(payload[current:])
    return Batch(header, batch_control_id, file_control_id, messages)
