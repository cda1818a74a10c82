"""HL7 v2 ER7 ("pipe and hat") tokenizer built for the ingestion hot path.

Why not hl7apy: it builds a typed object per field, component and subcomponent and looks up the
HL7 reference tables for each, costing milliseconds per message, while a router mostly reads a
dozen values (MSH-9, MSH-10, PID-3...) out of each message. This module only tokenizes: it splits
segments eagerly (one C-level ``str.split``), splits a segment into fields the first time the
segment is read and only a few fields past the one asked for, and splits repetitions, components
and subcomponents only along the path asked for, without creating objects. Nothing is validated
against the HL7 tables; datatypes are the caller's business.

On CPython every method call or allocation costs about as much as the string work of a typical
lookup, so the hot path (:func:`parse` and :meth:`Message.get`) is written to minimise them,
at some cost in elegance: paths are compiled once and cached, segment validation and indexing
are cached per message structure, and get() inlines its helpers.

Design choices, and why:

* Delimiters always come from MSH-1/MSH-2 of the message itself: senders do use custom ones, and a
  hard-coded ``|`` silently mis-splits their messages instead of failing.
* Values are returned unescaped only at leaves, and only when the escape character is present, so
  the common case costs one ``in`` test. Non-leaf elements are returned as raw (still escaped) wire
  text, because unescaping them would make their delimiters ambiguous.
* The structure mirrors the wire splitting exactly: an element present but empty reads as ``""``,
  an element beyond the last delimiter reads as ``None``. The HL7 null ``""`` (two double quotes)
  is returned verbatim; telling "delete this value" from "no value" belongs to the caller.
* :class:`Er7Error` messages carry codes, positions and lengths only, never message content: a
  malformed message is exactly the one that gets logged, and its content is patient data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from operator import itemgetter
from typing import Final

from formats.reasons import ReasonCode

__all__ = [
    "Component",
    "Delimiters",
    "Er7Error",
    "Field",
    "Message",
    "Repetition",
    "Segment",
    "escape",
    "parse",
    "unescape",
]

_SEGMENT_NAME: Final = re.compile(r"[A-Z][A-Z0-9]{2}")
# [0-9], not \d: \d also matches non-ASCII digits, which int() would then happily accept; and
# bounded, as no HL7 position comes near a million while str.split() rejects huge counts.
_NUMBER: Final = "([0-9]{1,6})"
_PATH: Final = re.compile(
    rf"([A-Z][A-Z0-9]{{2}})(?:\({_NUMBER}\))?-{_NUMBER}(?:\[{_NUMBER}\])?(?:\.{_NUMBER}(?:\.{_NUMBER})?)?"
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

# (segment key, index in the split segment, special, rep, comp, sub): the key is "PID|" for the
# first PID and "PID|2" for the second (see _index_segments); special is 1 for MSH-1 and 2 for
# MSH-2, which are read verbatim, and 0 otherwise.
_Spec = tuple[str, int, int, int, int, int]

# Caches keyed by small, bounded sets of strings; the bounds stop hostile input from growing them.
_CACHE_LIMIT: Final = 4096
_DELIMITER_CACHE: dict[str, Delimiters] = {}
# Segment starts ("PID|") already validated, per field separator.
_GOOD_HEADS: dict[str, set[str]] = {}
_PIPE_HEADS: Final[set[str]] = _GOOD_HEADS.setdefault("|", set())
# Message structures already validated: joined segment starts ("MSH|PID|PV1|") of
# "|"-separated messages, mapped to their segment index (see _index_segments).
_STRUCTURES: dict[str, dict[str, int]] = {}
_STRUCTURE_LIMIT: Final = 1024
_MAX_CACHED_STRUCTURE: Final = 4 * 128  # segments; longer messages are validated each time
_PATH_CACHE: dict[str, _Spec] = {}


class Er7Error(ValueError):
    """A message that cannot be tokenized at all, as opposed to one with odd content.

    ``code`` is a stable machine-readable reason (``empty``, ``nul_character``, ``no_msh``,
    ``msh_too_short``, ``bad_delimiters``, ``bad_segment_name``) so that callers can count and route
    rejects (e.g. answer an MLLP NAK) without parsing prose; ``location`` says where (``MSH-2``,
    ``segment 3``, ``offset 120``). The text is built from these and from lengths only: this
    exception ends up in logs and dead-letter metadata, where patient data must never go.
    """

    def __init__(self, code: ReasonCode, location: str, detail: str = "") -> None:
        self.code = code
        self.location = location
        self.detail = detail
        super().__init__(f"{code} at {location}: {detail}" if detail else f"{code} at {location}")

    def __reduce__(self) -> tuple[type[Er7Error], tuple[ReasonCode, str, str]]:
        # Exceptions cross process boundaries (worker pools); the default reduce would call
        # __init__ with the formatted message only.
        return (type(self), (self.code, self.location, self.detail))


def _escape_table(d: Delimiters) -> dict[int, str]:
    e = d.escape
    table = {
        ord(e): f"{e}E{e}",
        ord(d.field): f"{e}F{e}",
        ord(d.component): f"{e}S{e}",
        ord(d.subcomponent): f"{e}T{e}",
        ord(d.repetition): f"{e}R{e}",
        # Hex rather than \.br\ for CR and LF: \.br\ means "line break", which unescapes to "\n";
        # only byte-exact encodings keep escape() a true inverse of unescape().
        ord("\r"): f"{e}X0D{e}",
        ord("\n"): f"{e}X0A{e}",
        ord("\x00"): f"{e}X00{e}",  # parse() rejects raw NUL, so any string stays transportable
    }
    # Every other control character too: 0x0B and 0x1C are MLLP's frame bytes, so a value echoed raw
    # (an ACK quoting the sender's MSH-10 after unescaping its \X0B\) would cut the frame in two.
    for code in (*range(0x01, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F):
        table[code] = f"{e}X{code:02X}{e}"
    if d.truncation is not None:
        table[ord(d.truncation)] = f"{e}P{e}"
    return table


def _unescape_table(d: Delimiters) -> dict[str, str]:
    table = {
        "F": d.field,
        "S": d.component,
        "T": d.subcomponent,
        "R": d.repetition,
        "E": d.escape,
        # Highlighting has no plain-text rendering; keeping the markers would corrupt the value.
        "H": "",
        "N": "",
        # Formatted-text commands (FT datatype). Applied everywhere because they mean nothing else.
        ".br": "\n",
        ".ce": "\n",
        ".fi": "",
        ".nf": "",
    }
    if d.truncation is not None:
        table["P"] = d.truncation
    return table


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The six separators a message declares in MSH-1/MSH-2.

    Validated on construction (single, distinct, non-alphanumeric, non-space characters) because
    escape()/unescape() are only inverse of each other when an escape sequence's letters can never
    be mistaken for a delimiter. ``truncation`` is the HL7 2.7 fifth encoding character; it is
    accepted whatever MSH-12 says, since some pre-2.7 senders already emit it.
    """

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None
    _escapes: dict[int, str] = dataclass_field(init=False, repr=False, compare=False, hash=False)
    _unescapes: dict[str, str] = dataclass_field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        chars = [self.field, self.component, self.repetition, self.escape, self.subcomponent]
        if self.truncation is not None:
            chars.append(self.truncation)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1 or c.isalnum() or c.isspace() or not c.isprintable():
                raise ValueError("a delimiter must be one printable, non-alphanumeric, non-space character")
        if len(set(chars)) != len(chars):
            raise ValueError("delimiters must be distinct")
        object.__setattr__(self, "_escapes", _escape_table(self))
        object.__setattr__(self, "_unescapes", _unescape_table(self))


_DEFAULT: Final = Delimiters()
_DEFAULT_MSH: Final = "MSH|^~\\&|"
_HEAD: Final = itemgetter(slice(0, 4))


def _decode_sequence(seq: str, d: Delimiters) -> str | None:
    """Decode one escape sequence body, or return None to leave it verbatim."""
    simple = d._unescapes.get(seq)
    if simple is not None:
        return simple
    head = seq[:1]
    if head == "X":
        digits = seq[1:]
        if digits and len(digits) % 2 == 0 and all(c in _HEX_DIGITS for c in digits):
            # The bytes' charset is gone by now (we work on str), so bytes map 1:1 to code points
            # (latin-1): exact for ASCII and 8859/1, and reversible (.encode("latin-1")) otherwise.
            return bytes.fromhex(digits).decode("latin-1")
        return None
    if head == ".":
        cmd, count = seq[:3], seq[3:]
        if cmd in (".sp", ".sk", ".in", ".ti"):
            if cmd in (".in", ".ti"):
                # Indentation is layout; its (possibly negative) amount has no plain-text meaning.
                return "" if re.fullmatch(r"[+-]?[0-9]*", count) else None
            if count == "":
                n = 1
            elif len(count) <= 2 and count.isdigit() and count.isascii():
                n = int(count)  # bounded: a hostile \.sp999999999\ must not allocate gigabytes
            else:
                return None
            return ("\n" if cmd == ".sp" else " ") * n
    # \Cxxyy\ and \Mxxyyzz\ switch character sets mid-value; the bytes they refer to were already
    # decoded with the message charset, so re-interpreting is impossible: keep them visible.
    return None


def _unescape_slow(text: str, d: Delimiters) -> str:
    esc = d.escape
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(esc, pos)
        if start < 0:
            break
        end = text.find(esc, start + 1)
        if end < 0:
            break  # unterminated: the rest passes through
        decoded = _decode_sequence(text[start + 1 : end], d)
        if decoded is None:
            out.append(text[pos : end + 1])
        else:
            out.append(text[pos:start])
            out.append(decoded)
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def unescape(text: str, d: Delimiters) -> str:
    """Turn wire text into the value it stands for.

    Recognised: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (delimiters), ``\\P\\`` (truncation character,
    when the message declares one), ``\\H\\ \\N\\`` (highlighting: removed), ``\\Xhh..\\`` (bytes,
    decoded as latin-1 so no information is lost), and the formatted-text commands ``\\.br\\``,
    ``\\.ce\\`` (newline), ``\\.sp<n>\\`` (n newlines), ``\\.sk<n>\\`` (n spaces), ``\\.fi\\``,
    ``\\.nf\\``, ``\\.in<n>\\``, ``\\.ti<n>\\`` (removed). Anything else (``\\C..\\``, ``\\M..\\``,
    ``\\Z..\\``, malformed or unterminated sequences) is kept verbatim, escape characters included,
    so that no content is silently dropped.
    """
    if d.escape not in text:
        return text
    return _unescape_slow(text, d)


def escape(text: str, d: Delimiters) -> str:
    """Encode a value for the wire so that ``unescape(escape(s), d) == s`` for every string.

    Delimiters and the escape character use their letter sequences; CR, LF, NUL and every other
    control character but TAB use ``\\Xhh\\`` (a raw CR would end the segment, a raw NUL is
    rejected by parse(), a raw 0x0B or 0x1C would break the MLLP frame). Other characters are left
    to the transport charset: escaping non-ASCII as hex would tie the text to one byte encoding.
    """
    return text.translate(d._escapes)


def _delimiters_from(msh: str) -> Delimiters:
    if msh.startswith(_DEFAULT_MSH):
        return _DEFAULT
    if msh[:3] != "MSH":
        raise Er7Error(ReasonCode.NO_MSH, "segment 1", "message does not start with an MSH segment")
    if len(msh) < 8:
        raise Er7Error(
            ReasonCode.MSH_TOO_SHORT,
            "MSH-2",
            f"MSH is {len(msh)} characters, at least 8 are needed for delimiters",
        )
    fs = msh[3]
    end = msh.find(fs, 4)
    key = msh[3:] if end < 0 else msh[3:end]
    cached = _DELIMITER_CACHE.get(key)
    if cached is not None:
        return cached
    enc = key[1:]
    if len(enc) not in (4, 5):
        raise Er7Error(
            ReasonCode.BAD_DELIMITERS, "MSH-2", f"expected 4 or 5 encoding characters, found {len(enc)}"
        )
    trunc = enc[4] if len(enc) == 5 else None
    try:
        d = Delimiters(fs, enc[0], enc[1], enc[2], enc[3], trunc)
    except ValueError:
        location = "MSH-1" if fs.isalnum() or fs.isspace() or not fs.isprintable() else "MSH-2"
        raise Er7Error(
            ReasonCode.BAD_DELIMITERS,
            location,
            "delimiters must be distinct printable non-alphanumeric characters",
        ) from None
    if len(_DELIMITER_CACHE) < _CACHE_LIMIT:
        _DELIMITER_CACHE[key] = d
    return d


def _validate_segments(raws: list[str], fs: str) -> tuple[list[str], list[str]]:
    """Slow path of parse(): find the first bad segment, or learn the new good segment starts.

    Returns the kept segments and their heads, a head being the name plus the field separator
    (also for a bare 3-character segment, so that lookups need a single key).
    """
    good = _GOOD_HEADS.get(fs)
    if good is None:
        good = set() if len(_GOOD_HEADS) >= _CACHE_LIMIT else _GOOD_HEADS.setdefault(fs, set())
    kept: list[str] = []
    heads: list[str] = []
    for index, raw in enumerate(raws, start=1):
        head = raw[:4]
        if head not in good:
            if not raw or raw.isspace():
                continue  # blank line between or after segments: a transport artefact
            if not _SEGMENT_NAME.fullmatch(raw[:3]) or (len(raw) > 3 and raw[3] != fs):
                raise Er7Error(
                    ReasonCode.BAD_SEGMENT_NAME,
                    f"segment {index}",
                    f"segment must start with [A-Z][A-Z0-9]{{2}} and the field separator (length {len(raw)})",
                )
            if len(raw) == 3:
                head = raw + fs
            elif len(good) < _CACHE_LIMIT:
                good.add(head)
        kept.append(raw)
        heads.append(head)
    return kept, heads


def _parse_slow(raws: list[str]) -> Message:
    """parse() for anything unusual: BOM, blank leading lines, custom delimiters, errors."""
    if raws and raws[0][:1] == "\ufeff":
        raws[0] = raws[0][1:]
    raws = [raw for raw in raws if raw and not raw.isspace()]
    if not raws:
        raise Er7Error(ReasonCode.EMPTY, "message", "no segment found")
    d = _delimiters_from(raws[0])
    kept, heads = _validate_segments(raws, d.field)
    # Segments are keyed "NAME|" whatever the separator, so that paths compile to one key.
    return Message(d, kept, _index_segments("".join(head[:3] + "|" for head in heads)))


def parse(text: str) -> Message:
    """Tokenize one ER7 message (without MLLP framing).

    Segments are separated by CR; LF and CRLF are accepted too because files and copy-pastes
    carry them, and blank or whitespace-only lines are dropped. A leading BOM is ignored.
    Only tokenization problems raise :class:`Er7Error`: an unknown segment or an odd value is
    the business of later stages, which can report it with proper context.
    """
    if "\x00" in text:
        raise Er7Error(ReasonCode.NUL_CHARACTER, f"offset {text.index(chr(0))}", "NUL character in message")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    raws = text.split("\r")
    if not raws[-1]:
        raws.pop()
    if not raws or not raws[0].startswith(_DEFAULT_MSH):
        return _parse_slow(raws)
    # A feed repeats a handful of message structures: the joined segment starts ("MSH|EVN|PID|")
    # key a cache holding both the validation verdict and the segment index that get() uses, so
    # a known structure costs one dict lookup and no Python loop.
    heads = "".join(map(_HEAD, raws))
    index = _STRUCTURES.get(heads)
    if index is None:
        raws, index = _check_structure(raws, heads)
    return Message(_DEFAULT, raws, index)


def _check_structure(raws: list[str], heads: str) -> tuple[list[str], dict[str, int]]:
    """parse() for a "|"-separated message whose sequence of segments was not seen yet."""
    if len(heads) == 4 * len(raws) and _PIPE_HEADS.issuperset(map(_HEAD, raws)):
        index = _index_segments(heads)
        if len(_STRUCTURES) < _STRUCTURE_LIMIT and len(heads) <= _MAX_CACHED_STRUCTURE:
            _STRUCTURES[heads] = index
        return raws, index
    kept, listed = _validate_segments(raws, "|")
    return kept, _index_segments("".join(listed))


def _index_segments(heads: str) -> dict[str, int]:
    """Map "PID|" to the first PID's position, "PID|2" to the second's, and so on.

    One dict lookup then finds any segment occurrence, present or not, without a scan.
    """
    index: dict[str, int] = {}
    seen: dict[str, int] = {}
    for position in range(len(heads) >> 2):
        key = heads[4 * position : 4 * position + 4]
        count = seen[key] = seen.get(key, 0) + 1
        index[key if count == 1 else f"{key}{count}"] = position
    return index


def _compile_path(path: str) -> _Spec:
    match = _PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"invalid HL7 path {path!r}: expected e.g. 'PID-3', 'OBX(2)-5', 'PID-3[2].4.1'")
    groups = match.groups()[1:]
    if any(g is not None and int(g) == 0 for g in groups):
        raise ValueError(f"invalid HL7 path {path!r}: positions are 1-based")
    name = match.group(1)
    numbers = [int(g) if g is not None else 0 for g in groups]
    n_occurrence, n_field, n_rep, n_comp, n_sub = numbers
    position, special = n_field, 0
    if name == "MSH":
        # No split item holds MSH-1 (it is the separator itself), so MSH-n sits at n - 1.
        position = n_field - 1
        special = n_field if n_field <= 2 else 0
    key = f"{name}|{n_occurrence}" if n_occurrence > 1 else f"{name}|"
    spec = (key, position, special, n_rep, n_comp, n_sub)
    if len(_PATH_CACHE) < _CACHE_LIMIT:
        _PATH_CACHE[path] = spec
    return spec


class Component:
    """One component; its subcomponents are split and unescaped on first access only."""

    __slots__ = ("_d", "_subs", "raw")

    def __init__(self, raw: str, d: Delimiters) -> None:
        self.raw = raw
        self._d = d
        self._subs: list[str] | None = None

    @property
    def subcomponents(self) -> list[str]:
        subs = self._subs
        if subs is None:
            d = self._d
            subs = self._subs = [unescape(s, d) for s in self.raw.split(d.subcomponent)]
        return subs

    def __repr__(self) -> str:
        return f"<Component {len(self.raw)} chars>"


class Repetition:
    """One occurrence of a field (HL7 ``~``); components are split on first access."""

    __slots__ = ("_comps", "_d", "raw")

    def __init__(self, raw: str, d: Delimiters) -> None:
        self.raw = raw
        self._d = d
        self._comps: list[Component] | None = None

    @property
    def components(self) -> list[Component]:
        comps = self._comps
        if comps is None:
            d = self._d
            comps = self._comps = [Component(c, d) for c in self.raw.split(d.component)]
        return comps

    def __repr__(self) -> str:
        return f"<Repetition {len(self.raw)} chars>"


class Field:
    """One field with all its repetitions; split on first access."""

    __slots__ = ("_d", "_reps", "raw")

    def __init__(self, raw: str, d: Delimiters) -> None:
        self.raw = raw
        self._d = d
        self._reps: list[Repetition] | None = None

    @property
    def repetitions(self) -> list[Repetition]:
        reps = self._reps
        if reps is None:
            d = self._d
            reps = self._reps = [Repetition(r, d) for r in self.raw.split(d.repetition)]
        return reps

    def __repr__(self) -> str:
        return f"<Field {len(self.raw)} chars>"


def _atomic_field(raw: str, d: Delimiters) -> Field:
    """MSH-1 and MSH-2 hold the delimiters themselves: never split nor unescape them."""
    component = Component(raw, d)
    component._subs = [raw]
    repetition = Repetition(raw, d)
    repetition._comps = [component]
    result = Field(raw, d)
    result._reps = [repetition]
    return result


def _lookup(text: str, d: Delimiters, rep: int, comp: int, sub: int) -> str | None:
    """Walk one field's text down to the element asked for; 0 means "not asked for".

    Works on plain strings with bounded splits and creates no objects: this is the hot path.
    Message.get() carries an inlined copy of this function; keep both in step.
    """
    sep = d.repetition
    if sep in text:
        if rep > 1:
            items = text.split(sep, rep)
            if rep > len(items):
                return None
            text = items[rep - 1]
        else:
            text = text.partition(sep)[0]
    elif rep > 1:
        return None
    if comp:
        sep = d.component
        if comp > 1:
            items = text.split(sep, comp)
            if comp > len(items):
                return None
            text = items[comp - 1]
        else:
            text = text.partition(sep)[0]
        sep = d.subcomponent
        if sep in text:
            if sub > 1:
                items = text.split(sep, sub)
                if sub > len(items):
                    return None
                text = items[sub - 1]
            elif sub:
                text = text.partition(sep)[0]
            else:
                return text
        elif sub > 1:
            return None
    elif d.component in text or d.subcomponent in text:
        return text
    if d.escape in text:
        return _unescape_slow(text, d)
    return text


def _msh_delimiter_field(raw: str, fs: str, n: int, rep: int, comp: int, sub: int) -> str | None:
    """MSH-1 or MSH-2, verbatim: they hold the delimiters, so splitting them is meaningless."""
    if rep > 1 or comp > 1 or sub > 1:
        return None
    parts = raw.split(fs, 2)
    if len(parts) < 2:  # a bare "MSH" later in the message has neither
        return None
    return fs if n == 1 else parts[1]


# How many fields past the one asked for are split off on a segment's first read; the rest stays
# in one unsplit remainder until needed. Routers read a few low-numbered fields of long segments.
_SPLIT_AHEAD: Final = 4


class Segment:
    """One segment; split into fields the first time one is read, then cached.

    Field numbering follows HL7: for MSH, field 1 is the field separator itself (it sits between
    the name and MSH-2, so no split item holds it) and field 2 the encoding characters, which
    are returned verbatim. The split is cached in a list shared with the owning message, so that
    reading through :meth:`Message.get` and through segment objects never splits twice.
    """

    __slots__ = ("_cache", "_d", "_fields", "_index", "name", "raw")

    def __init__(
        self, name: str, raw: str, d: Delimiters, cache: list[list[str] | None] | None = None, index: int = 0
    ) -> None:
        self.name = name
        self.raw = raw
        self._d = d
        self._cache: list[list[str] | None] = [None] if cache is None else cache
        self._index = index
        self._fields: dict[int, Field] | None = None

    def _parts(self) -> list[str]:
        cache = self._cache
        parts = cache[self._index]
        fs = self._d.field
        if parts is None:
            parts = cache[self._index] = self.raw.split(fs)
        elif fs in parts[-1]:  # Message.get() left an unsplit remainder
            parts.extend(parts.pop().split(fs))
        return parts

    def __len__(self) -> int:
        n = len(self._parts())
        # MSH-1 has no split item of its own, but exists whenever a separator follows the name.
        return n if self.name == "MSH" and n > 1 else n - 1

    def __repr__(self) -> str:
        return f"<Segment {self.name} with {len(self)} fields>"

    def field(self, n: int) -> Field | None:
        """Field ``n`` (1-based) as an object tree, or None when the segment is shorter."""
        if n < 1:
            raise ValueError("field numbers are 1-based")
        fields = self._fields
        if fields is None:
            fields = self._fields = {}
        result = fields.get(n)
        if result is not None:
            return result
        if self.name == "MSH" and n <= 2:
            text = _msh_delimiter_field(self.raw, self._d.field, n, 1, 1, 1)
            if text is not None:
                result = _atomic_field(text, self._d)
        else:
            parts = self._parts()
            pos = n - 1 if self.name == "MSH" else n
            if pos < len(parts):
                result = Field(parts[pos], self._d)
        if result is not None:
            fields[n] = result
        return result

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        """Unescaped leaf ``n.rep.comp.sub`` (all 1-based), or None when absent."""
        if n < 1 or rep < 1 or comp < 1 or sub < 1:
            raise ValueError("positions are 1-based")
        if self.name == "MSH":
            if n <= 2:
                return _msh_delimiter_field(self.raw, self._d.field, n, rep, comp, sub)
            n -= 1
        parts = self._parts()
        if n >= len(parts):
            return None
        return _lookup(parts[n], self._d, rep, comp, sub)


class Message:
    """A tokenized message. Segment objects and field splits are made on first access only."""

    __slots__ = ("_index", "_parts", "_raws", "_segs", "delimiters")

    def __init__(self, delimiters: Delimiters, raws: list[str], index: dict[str, int]) -> None:
        self.delimiters = delimiters
        self._raws = raws
        self._index = index  # shared between messages of one structure: never mutate
        self._parts: list[list[str] | None] = [None] * len(raws)
        self._segs: list[Segment | None] | None = None

    def __repr__(self) -> str:
        return f"<Message with {len(self._raws)} segments>"

    def _segment_at(self, index: int) -> Segment:
        segs = self._segs
        if segs is None:
            segs = self._segs = [None] * len(self._raws)
        seg = segs[index]
        if seg is None:
            raw = self._raws[index]
            seg = segs[index] = Segment(raw[:3], raw, self.delimiters, self._parts, index)
        return seg

    @property
    def segments(self) -> list[Segment]:
        return [self._segment_at(i) for i in range(len(self._raws))]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th (1-based) segment called ``name``, or None."""
        if occurrence < 1:
            raise ValueError("occurrences are 1-based")
        index = self._index.get(f"{name}|{occurrence}" if occurrence > 1 else f"{name}|")
        return None if index is None else self._segment_at(index)

    def segments_named(self, name: str) -> list[Segment]:
        found: list[Segment] = []
        index = self._index.get(f"{name}|")
        while index is not None:
            found.append(self._segment_at(index))
            index = self._index.get(f"{name}|{len(found) + 1}")
        return found

    def get(self, path: str) -> str | None:
        """Read one element by HL7 path; None when absent, ``""`` when present but empty.

        Grammar (1-based): ``SEG[(occurrence)]-field[[repetition]][.component[.subcomponent]]``,
        e.g. ``PID-3``, ``PID-3[2].4.2``, ``OBX(2)-5``. Without ``[n]`` the first repetition is
        meant. A leaf (no deeper delimiter inside) is returned unescaped; a non-leaf, e.g. ``PID-3``
        on ``123^^^HOP``, is returned as raw wire text, because unescaping it would turn escaped
        delimiters into real ones and make the result ambiguous. MSH-1 and MSH-2 are returned
        verbatim. Invalid paths raise ValueError.
        """
        try:
            spec = _PATH_CACHE[path]
        except KeyError:
            spec = _compile_path(path)
        key, at, special, rep, comp, sub = spec
        # What follows is Segment._parts() and _lookup() inlined, with a segment split only as
        # far as needed: on CPython a call costs about as much as the string operations of a
        # typical lookup, and `x in s` is tested first as it is much cheaper than a method call.
        index = self._index.get(key)
        if index is None:
            return None
        d = self.delimiters
        if special:
            return _msh_delimiter_field(self._raws[index], d.field, special, rep, comp, sub)
        cache = self._parts
        parts = cache[index]
        if parts is None:
            parts = cache[index] = self._raws[index].split(d.field, at + _SPLIT_AHEAD)
            size = len(parts)
        else:
            size = len(parts)
            if at >= size - 1 and d.field in parts[-1]:
                parts.extend(parts.pop().split(d.field, at - size + 1 + _SPLIT_AHEAD))
                size = len(parts)
        if at >= size:
            return None
        text = parts[at]
        sep = d.repetition
        if sep in text:
            if rep > 1:
                items = text.split(sep, rep)
                if rep > len(items):
                    return None
                text = items[rep - 1]
            else:
                text = text.partition(sep)[0]
        elif rep > 1:
            return None
        if comp:
            sep = d.component
            if comp > 1:
                items = text.split(sep, comp)
                if comp > len(items):
                    return None
                text = items[comp - 1]
            else:
                text = text.partition(sep)[0]
            sep = d.subcomponent
            if sep in text:
                if sub > 1:
                    items = text.split(sep, sub)
                    if sub > len(items):
                        return None
                    text = items[sub - 1]
                elif sub:
                    text = text.partition(sep)[0]
                else:
                    return text
            elif sub > 1:
                return None
        elif d.component in text or d.subcomponent in text:
            return text
        if d.escape in text:
            return _unescape_slow(text, d)
        return text

    def _msh(self, path: str) -> str:
        value = self.get(path)
        return "" if value is None else value

    @property
    def message_type(self) -> tuple[str, str, str]:
        """MSH-9 as (message code, trigger event, structure), ``""`` for missing parts."""
        return (self._msh("MSH-9.1"), self._msh("MSH-9.2"), self._msh("MSH-9.3"))

    @property
    def control_id(self) -> str:
        return self._msh("MSH-10.1")

    @property
    def version(self) -> str:
        return self._msh("MSH-12.1")

    @property
    def charsets(self) -> list[str]:
        """MSH-18 repetitions (first is the default charset, next ones are code extensions)."""
        msh18 = self._segment_at(0).field(18)
        if msh18 is None or not msh18.raw:
            return []
        return [rep.components[0].subcomponents[0] for rep in msh18.repetitions]

    def encode(self) -> str:
        """Serialize back to ER7; every segment is CR-terminated, as HL7 specifies."""
        return "\r".join(self._raws) + "\r"
