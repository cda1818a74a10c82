"""HL7 v2 character sets (MSH-18) as met on French hospital interfaces.

The declaration must be read before the message can be decoded, so it is sniffed from the raw bytes:
the MSH segment is ASCII in practice in every charset we accept (all are ASCII supersets).

Declarations are often wrong -- French systems commonly send latin-1 without declaring anything, or
declare one charset and send another -- so decoding never raises on byte content: it reports a
``mismatch`` instead and lets the caller decide (count, warn, quarantine). Only an unknown charset
*name* raises, because then there is no sane way to proceed and the sender must be told (AR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "Decoded",
    "UnknownCharset",
    "codec_for",
    "decode",
    "encode_for_reply",
    "sniff_declared_charset",
]

_BOM: Final = b"\xef\xbb\xbf"
_MSH: Final = b"MSH"
_MSH18_INDEX: Final = 17  # fields[0] is "MSH", fields[1] is MSH-2, so MSH-n is fields[n - 1]
_MAX_NAME_IN_ERROR: Final = 20

# Keys are upper-case with all whitespace removed (see _normalise). HL7 table 0211 values met in
# France, plus "UNICODE" and "UTF-8" seen in the wild. "UNICODE" formally names ISO/IEC 10646
# without fixing an encoding, but a UTF-16 sender could not produce the ASCII MSH segment we just
# read, so a sender writing it means UTF-8. Other spellings (e.g. "ISO-8859-1") are deliberately
# not guessed: an unknown name is NAKed so the interface gets fixed rather than silently mis-decoded.
_CODECS: Final[dict[str, str]] = {
    "": "ascii",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODEUTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
}


class UnknownCharset(ValueError):
    """MSH-18 names a character set we do not support; the caller answers AR.

    The name is truncated so that a malformed message (e.g. a shifted field putting patient data
    into MSH-18) cannot push more than a few bytes of it into logs.
    """

    def __init__(self, declared: str) -> None:
        self.declared = declared[:_MAX_NAME_IN_ERROR]
        super().__init__(f"unsupported MSH-18 character set {self.declared!r}")


@dataclass(frozen=True, slots=True)
class Decoded:
    """Decoded message text plus what was declared and what was actually used.

    ``mismatch`` is True when the bytes contradict the declaration; it is kept separate from the text
    so that wrong declarations can be counted per sender without failing the message.
    """

    text: str
    declared: str
    codec: str
    mismatch: bool


def _normalise(name: str) -> str:
    return "".join(name.split()).upper()


def sniff_declared_charset(raw: bytes) -> str:
    """Return MSH-18's first repetition from raw message bytes, or "" when absent or without MSH.

    Works on bytes because the charset is needed *before* decoding; only the MSH segment is
    scanned, so cost does not grow with message size. The MSH must start a segment (start of
    message, possibly after a BOM or blank lines, or after a CR/LF) so that a literal "MSH" inside
    some other field is never mistaken for the header.
    """
    start = 3 if raw.startswith(_BOM) else 0
    while start < len(raw) and raw[start] in b"\r\n":
        start += 1
    idx = raw.find(_MSH, start)
    while idx > start and raw[idx - 1] not in b"\r\n":
        idx = raw.find(_MSH, idx + 1)
    if idx < 0:
        return ""
    sep_at = idx + len(_MSH)
    if sep_at >= len(raw) or raw[sep_at] in b"\r\n":
        return ""
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        found = raw.find(terminator, sep_at, end)
        if found >= 0:
            end = found
    fields = raw[idx:end].split(_first_char(raw[sep_at:end]))
    if len(fields) <= _MSH18_INDEX:
        return ""
    value = fields[_MSH18_INDEX]
    encoding_chars = fields[1]
    repetition = _first_char(encoding_chars[len(_first_char(encoding_chars)) :])
    if repetition:
        value = value.split(repetition, 1)[0]
    # latin-1 never fails; the name is ASCII in any sane message.
    return value.decode("latin-1").strip()


def _first_char(raw: bytes) -> bytes:
    """The bytes of the first character: one byte, or a whole UTF-8 sequence when they form one, so a
    non-ASCII delimiter sent in UTF-8 (e.g. "§" = C2 A7) is not split in the middle."""
    if raw[:1] >= b"\xc2":
        for size in (2, 3, 4):
            try:
                raw[:size].decode("utf-8")
            except UnicodeDecodeError:
                continue
            return raw[:size]
    return raw[:1]


def codec_for(declared: str) -> str | None:
    """Map an MSH-18 value to a Python codec name; None for an unknown name (the caller NAKs).

    Matching ignores case and whitespace because senders vary ("unicode utf-8", " 8859/1").
    "" maps to "ascii" as the standard says; :func:`decode` applies the looser French reality.
    """
    return _CODECS.get(_normalise(declared))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(raw: bytes, default_codec: str = "latin-1") -> Decoded:
    """Decode a message according to its MSH-18, tolerating wrong declarations.

    * Absent or ASCII declaration with non-ASCII bytes: ``mismatch`` (the standard says ASCII);
      decoded as UTF-8 when the bytes are valid UTF-8 -- random latin-1 text is almost never valid
      UTF-8, so this guess is safe -- otherwise with ``default_codec`` (latin-1, the usual
      undeclared charset in French systems).
    * 8859/1 or 8859/15: every byte maps, so decoding cannot fail; valid UTF-8 with multibyte
      sequences sets ``mismatch`` but the text is still decoded as declared: we never guess against
      an explicit declaration, and the raw bytes are kept anyway so the message can be reprocessed.
    * UTF-8 declared but invalid: ``mismatch``, decoded as latin-1 so that nothing is lost.
    * A leading UTF-8 BOM is stripped; it also counts as a contradiction of any non-UTF-8
      declaration, since it is UTF-8 evidence.

    Raises :class:`UnknownCharset` only for an unknown charset name.
    """
    declared = sniff_declared_charset(raw)
    codec = codec_for(declared)
    if codec is None:
        raise UnknownCharset(declared)
    bom = raw.startswith(_BOM)
    body = raw[3:] if bom else raw
    if codec == "utf-8":
        try:
            return Decoded(body.decode("utf-8"), declared, "utf-8", False)
        except UnicodeDecodeError:
            return Decoded(body.decode("latin-1"), declared, "latin-1", True)
    if codec == "ascii":
        if not bom and body.isascii():
            return Decoded(body.decode("ascii"), declared, "ascii", False)
        try:
            return Decoded(body.decode("utf-8"), declared, "utf-8", True)
        except UnicodeDecodeError:
            # errors="replace" only matters for a caller-chosen default with undefined bytes
            # (e.g. cp1252): decoding must never raise on content.
            return Decoded(body.decode(default_codec, errors="replace"), declared, default_codec, True)
    mismatch = bom or (not body.isascii() and _is_utf8(body))
    return Decoded(body.decode(codec), declared, codec, mismatch)


def encode_for_reply(text: str, declared: str, used: str = "") -> bytes:
    """Encode an ACK in the charset the sender's message was read with, replacing what does not fit.

    ``used`` is the codec the message was actually decoded with (:class:`Decoded` ``codec``): the
    values an ACK echoes (MSH-10 in MSA-2, the delimiters, the parties) then go back as the very bytes
    the sender sent, even when its MSH-18 was absent or wrong; encoding them by the declaration alone
    turned a non-ASCII delimiter or control id into "?", and the ACK no longer parsed or matched.
    Never raises: an ACK must always go out, and a "?" in our own error text is better than no
    answer. Without ``used``, the declaration's codec, else ASCII.
    """
    codec = used or codec_for(declared) or "ascii"
    return text.encode(codec, errors="replace")
