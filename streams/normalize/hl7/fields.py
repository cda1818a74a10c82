"""Reading HL7 fields: the one way every part of the mapper takes values out of ER7 text.

It exists apart because it is the hot path (these run for nearly every field of every message) and
because the HL7 rules it encodes (the ``""`` null, escapes, subcomponents, padding to a known size) must
read the same in patients, encounters and results; one copy keeps them from drifting apart.
"""

from __future__ import annotations

import math
from typing import Any, Final

from formats.hl7.er7 import Delimiters, Segment, unescape

Record = dict[str, Any]

_NULL: Final = '""'  # the HL7 explicit null; a snapshot has no use for "delete", so it reads as absent


def _leaf(raw: str, d: Delimiters) -> str:
    """First subcomponent of a component, unescaped; the HL7 null reads as empty."""
    if d.subcomponent in raw:
        raw = raw.partition(d.subcomponent)[0]
    if raw == _NULL:
        return ""
    if d.escape in raw:
        return unescape(raw, d)
    return raw


def _leaves(rep: str, d: Delimiters, n: int) -> list[str]:
    """Components of one repetition as leaves, padded with "" to at least ``n``.

    One call per repetition rather than one per component: the common clean case (no escape, no
    subcomponent, no HL7 null) costs a single split, and callers index the list without bounds checks.
    """
    comps = rep.split(d.component)
    if d.escape in rep or d.subcomponent in rep or _NULL in rep:
        comps = [_leaf(c, d) for c in comps]
    short = n - len(comps)
    if short > 0:
        comps.extend([""] * short)
    return comps


def _text(raw: str, d: Delimiters) -> str:
    """A whole repetition read as text: component separators a sender left unescaped are kept."""
    if raw == _NULL:
        return ""
    return unescape(raw, d) if d.escape in raw else raw


def _first(raw: str, d: Delimiters) -> str:
    """First repetition, first component, first subcomponent: the code of a simple coded field."""
    if d.repetition in raw:
        raw = raw.partition(d.repetition)[0]
    if d.component in raw:
        raw = raw.partition(d.component)[0]
    if d.subcomponent in raw:
        raw = raw.partition(d.subcomponent)[0]
    if raw == _NULL:
        return ""
    return unescape(raw, d) if d.escape in raw else raw


def _fields(seg: Segment, d: Delimiters, n: int) -> list[str]:
    """A segment's fields (index = HL7 field number), padded so that fields up to ``n`` can be indexed."""
    parts = seg.raw.split(d.field)
    short = n + 1 - len(parts)
    if short > 0:
        parts.extend([""] * short)
    return parts


def _first_rep(raw: str, d: Delimiters) -> str:
    return raw.partition(d.repetition)[0] if d.repetition in raw else raw


def _looks_like_oid(text: str) -> bool:
    return bool(text) and text.isascii() and text.replace(".", "").isdigit() and text[0] != "."


def _hd(namespace: str, universal_id: str, id_type: str) -> tuple[str | None, str | None]:
    """(namespace, OID) of an HD; the universal id counts as an OID only when typed ISO or shaped so."""
    oid: str | None = None
    if universal_id and (id_type.upper() == "ISO" or (not id_type and _looks_like_oid(universal_id))):
        oid = universal_id
    return (namespace or None), oid


def _hd_in_component(raw: str, d: Delimiters) -> tuple[str | None, str | None]:
    subs = raw.split(d.subcomponent)
    n = len(subs)
    return _hd(
        _text(subs[0], d),
        _text(subs[1], d) if n > 1 else "",
        _text(subs[2], d) if n > 2 else "",
    )


def _number(text: str) -> float | None:
    """A decimal as clinical systems write it (French decimal comma accepted), or None.

    ``float()`` alone is too lenient: it takes "nan", "inf", "1_000" and non-ASCII digits, none of
    which is a measured value, and NaN/infinity would poison every downstream aggregate.
    """
    t = text.strip()
    if not t or not t.isascii() or "_" in t:
        return None
    if "," in t and "." not in t:
        t = t.replace(",", ".")
    try:
        value = float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _comparator_number(text: str) -> tuple[str | None, float | None]:
    t = text.strip()
    comparator: str | None = None
    if t[:1] in ("<", ">"):
        comparator = t[:2] if t[1:2] == "=" else t[:1]
        t = t[len(comparator) :]
    return comparator, _number(t)
