"""Test helpers around the MLLP client: corpus location and fresh control ids."""

from __future__ import annotations

import uuid
from pathlib import Path

from connectors.mllp.client import MllpClient
from connectors.mllp.client import ack_code as control_id_of_ack

__all__ = ["CORPUS", "MllpClient", "control_id_of_ack", "with_control_id"]

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
