"""The two trees a policy is built on: the canonical field tree of a kind (read from its ``.avsc``) and
the output tree a policy names in it, with :class:`KindPlan`, one kind's compiled result.

Apart from loading because the compiler and the national schema writer walk the same trees and must not
depend on how a policy file is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from schemas.registry import load_schema
from streams.pseudonymize.methods import LeafType, MethodSpec, Op, RecordContext

# ------------------------------------------------------------------ the canonical field tree


@dataclass(frozen=True)
class CanonField:
    name: str
    doc: str
    type_json: Any  # as written in the canonical file (named types may be references)
    leaf: LeafType
    record: CanonRecord | None  # the record (or list item record) the field holds, if any
    default: Any
    has_default: bool


@dataclass(frozen=True)
class CanonRecord:
    name: str
    doc: str
    fields: dict[str, CanonField]


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _resolve(node: Any, named: dict[str, Any]) -> Any:
    """The definition behind a type name, registering inline definitions on the way."""
    if isinstance(node, str) and node not in _PRIMITIVES:
        return named[node.rsplit(".", 1)[-1]]
    if isinstance(node, dict) and node.get("type") in ("record", "enum", "fixed"):
        named.setdefault(node["name"], node)
    return node


def _canon_record(definition: dict[str, Any], named: dict[str, Any]) -> CanonRecord:
    named.setdefault(definition["name"], definition)
    fields: dict[str, CanonField] = {}
    for f in definition["fields"]:
        raw = f["type"]
        branches = raw if isinstance(raw, list) else [raw]
        nullable = "null" in branches
        (main,) = [b for b in branches if b != "null"]
        main = _resolve(main, named)
        array = isinstance(main, dict) and main.get("type") == "array"
        inner = _resolve(main["items"], named) if array else main
        record: CanonRecord | None = None
        record_name: str | None = None
        if isinstance(inner, dict) and inner.get("type") == "record":
            record = _canon_record(inner, named)
            base, record_name = "record", inner["name"]
        elif isinstance(inner, dict) and inner.get("type") == "enum":
            base = "enum"
        elif isinstance(inner, dict) and inner.get("logicalType") == "timestamp-micros":
            base = "timestamp"
        else:
            base = inner if isinstance(inner, str) else str(inner.get("type"))
            if base == "string" and f["name"].endswith("_date"):
                base = "date_text"  # FHIR date strings: birth_date, death_date
        leaf = LeafType(f["name"], base, nullable, array, record_name)
        fields[f["name"]] = CanonField(
            f["name"], f.get("doc", ""), raw, leaf, record, f.get("default"), "default" in f
        )
    return CanonRecord(definition["name"], definition.get("doc", ""), fields)


@cache
def canonical_tree(kind: str) -> tuple[CanonRecord, dict[str, Any]]:
    """The field tree of ``schemas/avro/canonical/<kind>.avsc`` and its named types, read once."""
    definition = json.loads(load_schema(f"canonical/{kind}"))
    named: dict[str, Any] = {}
    return _canon_record(definition, named), named


# ------------------------------------------------------------------ the output tree


@dataclass
class OutChild:
    field: CanonField
    path: str
    spec: MethodSpec | None = None  # a method on this field …
    sub: OutNode | None = None  # … or a record node below it
    out_name: str = ""
    kept_whole: bool = False  # the sub node came from ``keep`` of the whole record


@dataclass
class OutNode:
    record: CanonRecord
    path: str
    children: dict[str, OutChild] = field(default_factory=dict)
    # filled by the compiler
    keeps: tuple[str, ...] = ()
    ops: tuple[tuple[str, Op, OutChild], ...] = ()


@dataclass
class KindPlan:
    """One kind's compiled policy: ``build(canonical_record, context)`` returns the national record."""

    kind: str
    topic: str
    schema_name: str
    root: OutNode
    build: Callable[[Mapping[str, Any], RecordContext], dict[str, Any]]
    reference_build: Callable[[Mapping[str, Any], RecordContext], dict[str, Any]]
