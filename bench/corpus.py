"""The HL7 v2 test corpus, decoded the way the MLLP door decodes it.

Benchmarks run on the same files the tests use (tests/corpus/hl7) rather than on a synthetic
message: those files carry what slows real parsers down (repetitions, escapes, custom delimiters,
long OBX text), and a benchmark on anything easier would flatter every implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from formats.hl7 import er7

CORPUS_DIR = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "hl7"

# MSH-18 values of the corpus; anything else is read as latin-1, the French systems' default.
_CODECS = {"UNICODE UTF-8": "utf-8", "8859/15": "iso8859-15"}


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    name: str
    raw: bytes  # as a sender puts it on the wire
    text: str  # decoded per its MSH-18
    message_type: str  # MSH-9.1


def codec_for(raw: bytes) -> str:
    """Decode per MSH-18, read from the MSH segment, which is ASCII in every accepted charset."""
    charsets = er7.parse(raw.split(b"\r", 1)[0].decode("latin-1")).charsets
    return _CODECS.get(charsets[0] if charsets else "", "latin-1")


def load_corpus(directory: Path = CORPUS_DIR) -> list[CorpusMessage]:
    messages: list[CorpusMessage] = []
    for path in sorted(directory.glob("*.hl7")):
        # read_bytes, not read_text: text mode would turn the segment separator \r into \n.
        raw = path.read_bytes()
        text = raw.decode(codec_for(raw))
        messages.append(CorpusMessage(path.name, raw, text, er7.parse(text).message_type[0]))
    if not messages:
        raise FileNotFoundError(f"no *.hl7 file in {directory}")
    return messages
