"""A small, safe path language for reading vendor JSON: the only thing templates may compute.

Templates come from integrators, so they must never run code: an expression is parsed once, at load,
into a tuple of steps, and evaluating it only walks dicts and lists. The grammar is a JSONPath subset::

    $            the document the sender posted (a batch header, or the reading itself)
    @            the current reading (the element of the ``readings`` list being mapped)
    .name        a key (letters, digits, ``_`` and ``-``)
    ['any key']  a key with other characters
    [3] / [-1]   a list element
    [*]          every element (only in a template's ``readings`` expression)

A missing key or index yields :data:`MISSING` rather than an error, so that the caller decides whether
the field was optional.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final


class ExpressionError(ValueError):
    """The text is not an expression of this language; the message says where it stops being one."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

_STEP = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)"
    r"|\[(?P<index>-?\d+)\]"
    r"|\[(?P<star>\*)\]"
    r"|\['(?P<quoted>[^'\\]*)'\]"
    r'|\["(?P<dquoted>[^"\\]*)"\]',
    re.ASCII,
)

Step = str | int | None  # key, index, or None for [*]


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed expression: its root (``$`` or ``@``) and its steps."""

    text: str
    root: str
    steps: tuple[Step, ...]

    @property
    def has_wildcard(self) -> bool:
        return any(step is None for step in self.steps)

    def get(self, document: Any, reading: Any = MISSING) -> Any:
        """The single value at this path, or MISSING. A wildcard path is not allowed here.

        The hot path of every reading (several paths per reading, thousands of readings per batch), so
        the common step — a key of a dict — is inlined.
        """
        node = document if self.root == "$" else reading
        for step in self.steps:
            node = node.get(step, MISSING) if type(node) is dict and type(step) is str else _step(node, step)
            if node is MISSING:
                return MISSING
        return node

    def all(self, document: Any) -> list[tuple[str, Any]]:
        """Every value a wildcard path reaches, with its location (``$.readings[2]``), in order."""
        found: list[tuple[str, Any]] = [("$", document)]
        for step in self.steps:
            nxt: list[tuple[str, Any]] = []
            for where, node in found:
                if step is None:
                    if isinstance(node, list):
                        nxt.extend((f"{where}[{i}]", item) for i, item in enumerate(node))
                    continue
                value = _step(node, step)
                if value is not MISSING:
                    nxt.append((f"{where}[{step}]" if isinstance(step, int) else f"{where}.{step}", value))
            found = nxt
        return found


def _step(node: Any, step: Step) -> Any:
    if isinstance(step, str):
        return node.get(step, MISSING) if isinstance(node, dict) else MISSING
    if isinstance(step, int) and isinstance(node, list):
        return node[step] if -len(node) <= step < len(node) else MISSING
    return MISSING


def parse(text: str) -> Path:
    """Parse once at template load; raises ExpressionError naming the first position that is wrong."""
    if not isinstance(text, str) or not text:
        raise ExpressionError("an expression must be a non-empty string starting with $ or @")
    root = text[0]
    if root not in "$@":
        raise ExpressionError(f"expression {text!r} must start with $ (document) or @ (reading)")
    steps: list[Step] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ExpressionError(f"expression {text!r}: unexpected text at position {pos}")
        if match.group("name") is not None:
            steps.append(match.group("name"))
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        elif match.group("star") is not None:
            steps.append(None)
        else:
            steps.append(
                match.group("quoted") if match.group("quoted") is not None else match.group("dquoted")
            )
        pos = match.end()
    return Path(text, root, tuple(steps))
