"""Decide what an incoming MLLP frame is: accepted for storage, rejected with a reason, or an ACK to ignore.

This is the *validate* state of the MLLP pipeline, kept pure so that every bad-input case can be
tested without a socket or a broker. It reads only the MSH segment's routing fields with the fast
ER7 tokenizer; the clinical content is left untouched for the normalization stage, which is where a
message's meaning is judged. Reasons carry codes and positions, never values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from affluent.core.errors import ConfigError
from connectors.raw import raw_id_of
from formats.hl7 import er7
from formats.hl7.charset import Decoded, UnknownCharset, decode
from formats.hl7.coverage import MAPPED, event_of, is_mapped
from formats.reasons import ReasonCode

DEFAULT_DELIMITERS = er7.Delimiters()


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH routing fields an ACK and a raw record need (MSH-n.1 values, unescaped)."""

    delimiters: er7.Delimiters = DEFAULT_DELIMITERS
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""  # MSH-9.1
    trigger_event: str = ""  # MSH-9.2
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11.1
    version: str = ""  # MSH-12.1
    accept_ack_type: str = ""  # MSH-15
    application_ack_type: str = ""  # MSH-16
    declared_charset: str = ""  # MSH-18 first repetition
    codec: str = ""  # the codec the message was decoded with: ACKs echo its values in the same bytes

    @property
    def enhanced_mode(self) -> bool:
        """HL7 enhanced acknowledgement mode is asked for by valuing MSH-15 or MSH-16."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def type_label(self) -> str:
        return f"{self.message_type}^{self.trigger_event}" if self.trigger_event else self.message_type


def content_digest(payload: bytes) -> str:
    """What makes a resend *the same message*: a digest of its bytes with MSH-7 left out.

    (Sending facility, MSH-10) alone is not enough: interface engines reset their control-id counters
    after a reinstall and some reuse ids per day, so a different message can arrive under a known key.
    MSH-7 is left out because some engines restamp it on a resend. BLAKE2b-128: ~1 µs per KiB, and
    collisions are out of reach for a sender trying to shadow another message.
    """
    start = payload.find(b"MSH")
    if start >= 0 and len(payload) > start + 3:
        sep = payload[start + 3]
        end = len(payload)
        for eol in (b"\r", b"\n"):
            pos = payload.find(eol, start)
            if 0 <= pos < end:
                end = pos
        pos = start + 3  # MSH-1 is the field separator itself; MSH-7 starts after the 6th one
        for _ in range(5):
            pos = payload.find(sep, pos + 1, end)
            if pos < 0:
                break
        else:
            stop = payload.find(sep, pos + 1, end)
            stop = end if stop < 0 else stop
            payload = payload[: pos + 1] + payload[stop:]
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Accepted:
    header: Header
    decoded: Decoded
    raw: bytes
    digest: str = ""  # content_digest(raw), computed once by assess()

    @property
    def duplicate_key(self) -> str:
        """The ACK cache's key. A resend after a lost ACK has this key *and* the same ``digest``; the
        same key with another digest is a reused control id: a new message (see connectors/mllp/server.py)."""
        return f"{self.header.sending_facility}|{self.header.control_id}"

    @property
    def raw_id(self) -> str:
        """Includes the content digest, so a reused MSH-10 never collapses into an earlier message."""
        h = self.header
        return raw_id_of("hl7v2", h.sending_facility, h.sending_application, h.control_id, self.digest)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the hub will not store. ``severity`` picks AR (reject) or AE (error) in original mode."""

    reason_code: ReasonCode  # metric label, dead letter reason and ERR-3 (its HL7 table 0357 code)
    reason: str  # human-readable, content-free
    location: str = ""  # e.g. "MSH-10"
    severity: str = "reject"  # "reject" -> AR/CR, "error" -> AE/CE
    header: Header = field(default_factory=Header)

    @property
    def hl7_error(self) -> str:
        return self.reason_code.hl7_error


@dataclass(frozen=True, slots=True)
class Ignored:
    """An ACK sent to us: HL7 never acknowledges an acknowledgement."""

    header: Header


Assessment = Accepted | Rejected | Ignored


@dataclass(frozen=True, slots=True)
class IntakePolicy:
    allowed_message_types: frozenset[str] = frozenset(MAPPED)  # every type the hub maps
    default_charset: str = "latin-1"

    def __post_init__(self) -> None:
        """A configured type the hub does not map would be acknowledged and then always dead-lettered."""
        unmapped = sorted(self.allowed_message_types - set(MAPPED))
        if unmapped:
            raise ConfigError(
                f"mllp.allowed_message_types: {', '.join(unmapped)} not mapped by this hub "
                f"(mapped: {', '.join(sorted(MAPPED))})"
            )


def read_header(msg: er7.Message, codec: str = "") -> Header:
    msh = msg.segments[0]

    def v(n: int, comp: int = 1) -> str:
        return msh.value(n, 1, comp) or ""

    charsets = msg.charsets
    return Header(
        delimiters=msg.delimiters,
        sending_application=v(3),
        sending_facility=v(4),
        receiving_application=v(5),
        receiving_facility=v(6),
        message_type=v(9, 1),
        trigger_event=v(9, 2),
        control_id=v(10),
        processing_id=v(11),
        version=v(12),
        accept_ack_type=v(15).upper(),
        application_ack_type=v(16).upper(),
        declared_charset=charsets[0] if charsets else "",
        codec=codec,
    )


def salvage_header(payload: bytes) -> Header:
    """Best effort on a message that failed: read MSH alone so the NAK can still echo MSH-10."""
    start = payload.find(b"MSH")
    if start < 0:
        return Header()
    end = len(payload)
    for sep in (b"\r", b"\n"):
        pos = payload.find(sep, start)
        if 0 <= pos < end:
            end = pos
    for codec in ("utf-8", "latin-1"):  # UTF-8 first: a multi-byte delimiter must stay one character
        try:
            return read_header(er7.parse(payload[start:end].decode(codec)), codec)
        except (UnicodeDecodeError, er7.Er7Error):
            continue
    return Header()


def assess(payload: bytes, policy: IntakePolicy) -> Assessment:
    """Classify one frame's payload; never raises."""
    if not payload.strip(b"\r\n\t "):
        return Rejected(ReasonCode.EMPTY, "empty message")
    try:
        decoded = decode(payload, policy.default_charset)
    except UnknownCharset:
        return Rejected(
            ReasonCode.UNKNOWN_CHARSET,
            "unsupported character set declared in MSH-18",
            "MSH-18",
            header=salvage_header(payload),
        )
    try:
        msg = er7.parse(decoded.text)
    except er7.Er7Error as exc:
        return Rejected(
            exc.code,
            f"message cannot be tokenized: {exc.code}",
            exc.location,
            header=salvage_header(payload),
        )
    header = read_header(msg, decoded.codec)
    if len(msg.segments_named("MSH")) > 1:
        return Rejected(
            ReasonCode.SEVERAL_MESSAGES,
            "more than one MSH segment in one frame: send one message per MLLP frame",
            "MSH",
            header=header,
        )
    if header.message_type == "ACK":
        return Ignored(header)
    if not header.message_type:
        return Rejected(ReasonCode.MISSING_FIELD, "message type is empty", "MSH-9", "error", header)
    if not header.control_id:
        return Rejected(
            ReasonCode.MISSING_FIELD,
            "message control id is empty",
            "MSH-10",
            "error",
            header,
        )
    if header.message_type not in policy.allowed_message_types:
        allowed = ", ".join(sorted(policy.allowed_message_types))
        shown = "".join(c for c in header.message_type[:8] if c.isalnum())
        return Rejected(
            ReasonCode.UNSUPPORTED_TYPE,
            f"message type {shown} not accepted by this hub (accepted: {allowed})",
            "MSH-9",
            header=header,
        )
    _, trigger = event_of(msg)  # the mapper's own reading (formats/hl7/coverage.py)
    if not is_mapped(header.message_type, trigger):
        shown = "".join(c for c in trigger[:4] if c.isalnum())
        return Rejected(
            ReasonCode.UNSUPPORTED_EVENT,
            f"{header.message_type} event {shown or '(none)'} is not mapped by this hub "
            f"(mapped: {', '.join(sorted(MAPPED.get(header.message_type, ())))})",
            "MSH-9",
            header=header,
        )
    return Accepted(header, decoded, payload, content_digest(payload))
