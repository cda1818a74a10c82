"""Reading FHIR JSON defensively: every accessor coerces or ignores, never trusts a Python type.

Its own module because every other part of the mapper reads through it: pydantic validates in lax mode
(``"true"`` passes as a boolean, ``"5.2"`` as a decimal), so what validation let through must be read
the same way everywhere, and a number that is too large or not finite must fail with a content-free reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from formats.clinical import codes as common
from formats.clinical.codes import Record
from formats.fhir.admission import finite_number, parse_reference

_ETAG: Final = re.compile(r'(?:W/)?"?(?P<version>[A-Za-z0-9\-.]{1,64})"?')
_TRUE: Final = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "f", "n"})


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _dict(value: Any) -> Record | None:
    return value if isinstance(value, dict) else None


def _list(value: Any) -> list[Any]:
    """A JSON array, or nothing: a string or an object where an array belongs is not iterated."""
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> Iterator[Record]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


# A decimal no double holds is refused the way the door refuses it (formats/fhir/admission.py).
_number: Final = finite_number


def _bool(value: Any) -> bool | None:
    """pydantic's lax booleans, so that what validation let through is read the same way."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _coding(value: Any) -> Record | None:
    if not isinstance(value, dict):
        return None
    code = _str(value.get("code"))
    if code is None:
        return None
    return common.coding(_str(value.get("system")), code, _str(value.get("display")))


def _codings(concept: Any) -> list[Record]:
    if not isinstance(concept, dict):
        return []
    return [c for c in map(_coding, _list(concept.get("coding"))) if c is not None]


def _first_coding(concept: Any, preferred: str | None = None) -> Record | None:
    codings = _codings(concept)
    if preferred is not None:
        for c in codings:
            if c["system"] == preferred:
                return c
    return codings[0] if codings else None


def _first_code(concept: Any, preferred: str | None = None) -> str | None:
    c = _first_coding(concept, preferred)
    return str(c["code"]) if c else None


def _norm_system(system: Any) -> str:
    return system.rstrip("/") if isinstance(system, str) else ""


def _split_primary(codings: list[Record], systems: frozenset[str]) -> tuple[Record, list[Record], bool]:
    """(primary, the others in order, whether the primary is from `systems`)."""
    for i, c in enumerate(codings):
        if _norm_system(c["system"]) in systems:
            return c, codings[:i] + codings[i + 1 :], True
    return codings[0], codings[1:], False


# References parse as the door's check parses them (formats/fhir/admission.py).
_parse_reference: Final = parse_reference


def _etag_version(value: Any) -> str | None:
    text = _str(value)
    if text is None:
        return None
    match = _ETAG.fullmatch(text.strip())
    return match.group("version") if match else None
