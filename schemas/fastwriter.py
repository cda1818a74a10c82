"""A schema-compiled Avro binary writer for the hot path, with fastavro as the authority.

fastavro's ``schemaless_writer`` re-validates every value of a union to choose its branch; our schemas are
mostly ``["null", T]`` unions, so that check dominates encoding (~64 µs per canonical record here). This
module compiles a schema once into nested closures that write the Avro binary encoding directly
(``["null", T]``: null is branch 0, anything else branch 1), about three times faster.

Safety rule: the compiled writer is only trusted to be *fast*, never to be *lenient*. Whenever a value
does not fit what it expects (wrong type, missing field, unknown enum symbol) it raises, and the caller
falls back to fastavro, which either encodes the record (e.g. a missing field with a default) or reports
the error. Schemas using constructs it does not compile (general unions, fixed, decimals, …) are never
compiled at all. Tests check byte-for-byte equality with fastavro on every golden record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Writer = Callable[[Any, bytearray], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack


class NotCompilable(Exception):
    """The schema uses a construct this writer does not handle; use fastavro for it."""


def _long(n: int, out: bytearray) -> None:
    if type(n) is not int and type(n) is not bool:
        raise TypeError("long expected")
    n = (n << 1) ^ (n >> 63)
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(v: str, out: bytearray) -> None:
    if type(v) is not str:
        raise TypeError("string expected")
    b = v.encode("utf-8")
    _long(len(b), out)
    out += b


def _bytes(v: bytes, out: bytearray) -> None:
    if not isinstance(v, bytes | bytearray):
        raise TypeError("bytes expected")
    _long(len(v), out)
    out += v


def _boolean(v: bool, out: bytearray) -> None:
    if type(v) is not bool:
        raise TypeError("boolean expected")
    out.append(1 if v else 0)


def _double(v: float, out: bytearray) -> None:
    if type(v) is not float and type(v) is not int:
        raise TypeError("double expected")
    out += _DOUBLE(v)


def _float(v: float, out: bytearray) -> None:
    if type(v) is not float and type(v) is not int:
        raise TypeError("float expected")
    out += _FLOAT(v)


def _int(v: int, out: bytearray) -> None:
    if type(v) is not int or not -(2**31) <= v < 2**31:
        raise TypeError("int expected")
    _long(v, out)


def _timestamp_micros(v: datetime, out: bytearray) -> None:
    if type(v) is not datetime or v.tzinfo is None:
        raise TypeError("aware datetime expected")
    d = v - _EPOCH
    _long((d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds, out)


_PRIMITIVES: dict[str, Writer] = {
    "string": _string,
    "bytes": _bytes,
    "boolean": _boolean,
    "double": _double,
    "float": _float,
    "int": _int,
    "long": _long,
}


def compile_writer(schema: Any) -> Callable[[dict[str, Any]], bytes]:
    """Compile a (JSON-parsed, not fastavro-parsed) schema; raises NotCompilable when it cannot."""
    named: dict[str, Writer] = {}

    def comp(s: Any, ns: str) -> Writer:
        if isinstance(s, str):
            if s in _PRIMITIVES:
                return _PRIMITIVES[s]
            for name in (s, f"{ns}.{s}"):
                if name in named:
                    return named[name]
            raise NotCompilable(f"type {s}")
        if isinstance(s, list):
            if len(s) == 2 and s[0] == "null":
                inner = comp(s[1], ns)

                def optional(v: Any, out: bytearray, inner: Writer = inner) -> None:
                    if v is None:
                        out.append(0)
                    else:
                        out.append(2)
                        inner(v, out)

                return optional
            raise NotCompilable("general union")
        kind = s["type"]
        logical = s.get("logicalType")
        if logical == "timestamp-micros" and kind == "long":
            return _timestamp_micros
        if logical is not None:
            raise NotCompilable(f"logical type {logical}")
        if kind == "record":
            space = s.get("namespace", ns)
            full = s["name"] if "." in s["name"] else f"{space}.{s['name']}"
            fields: list[tuple[str, Writer]] = []

            def record(v: Any, out: bytearray, fields: list[tuple[str, Writer]] = fields) -> None:
                for name, write in fields:
                    write(v[name], out)  # KeyError on a missing field: fastavro applies defaults

            named[full] = named[s["name"]] = record
            for f in s["fields"]:
                fields.append((f["name"], comp(f["type"], space)))
            return record
        if kind == "enum":
            index = {sym: i for i, sym in enumerate(s["symbols"])}

            def enum(v: Any, out: bytearray, index: dict[str, int] = index) -> None:
                _long(index[v], out)

            space = s.get("namespace", ns)
            named[s["name"]] = named[f"{space}.{s['name']}"] = enum
            return enum
        if kind == "array":
            item = comp(s["items"], ns)

            def array(v: Any, out: bytearray, item: Writer = item) -> None:
                if type(v) is not list:
                    raise TypeError("list expected")
                if v:
                    _long(len(v), out)
                    for x in v:
                        item(x, out)
                out.append(0)

            return array
        if kind == "map":
            value = comp(s["values"], ns)

            def mapping(v: Any, out: bytearray, value: Writer = value) -> None:
                if type(v) is not dict:
                    raise TypeError("dict expected")
                if v:
                    _long(len(v), out)
                    for k, x in v.items():
                        _string(k, out)
                        value(x, out)
                out.append(0)

            return mapping
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        raise NotCompilable(f"type {kind}")

    root = comp(schema, "")

    def encode(record: dict[str, Any]) -> bytes:
        out = bytearray()
        root(record, out)
        return bytes(out)

    return encode
