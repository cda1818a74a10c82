"""Decide what an incoming MLLP frame is: accepted for storage, rejected with a reason, or an ACK to ignore.

This is the *validate* state of the MLLP pipeline, kept pure so that every bad-input case can be
tested without a socket or a broker. It reads only the MSH segment's routing fields with the fast
ER7 tokenizer; the clinical content is left untouched for the normalization stage, which is where a
message's meaning is judged. Reasons carry codes and positions, never values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.raw import raw_id_of
from formats.hl7 import er7
from formats.hl7.charset import Decoded, UnknownCharset, decode
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

    @property
    def enhanced_mode(self) -> bool:
        """HL7 enhanced acknowledgement mode is asked for by valuing MSH-15 or MSH-16."""
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def type_label(self) -> str:
        return f"{self.message_type}^{self.trigger_event}" if self.trigger_event else self.message_type


@dataclass(frozen=True, slots=True)
class Accepted:
    header: Header
    decoded: Decoded
    raw: bytes

    @property
    def duplicate_key(self) -> str:
        """Duplicates are the same (sending facility, MSH-10): a resend after a lost ACK."""
        return f"{self.header.sending_facility}|{self.header.control_id}"

    @property
    def raw_id(self) -> str:
        h = self.header
        return raw_id_of("hl7v2", h.sending_facility, h.sending_application, h.control_id)


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
    allowed_message_types: frozenset[str] = frozenset({"ADT", "ORU"})
    default_charset: str = "latin-1"


def read_header(msg: er7.Message) -> Header:
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
    try:
        return read_header(er7.parse(payload[start:end].decode("latin-1")))
    except er7.Er7Error:
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
    header = read_header(msg)
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
    return Accepted(header, decoded, payload)
