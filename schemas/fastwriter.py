"""A schema-compiled Avro binary writer for the hot path, with fastavro as the authority.

fastavro's ``schemaless_writer`` interprets the schema for every record and re-validates every value
of a union to choose its branch; our schemas are mostly ``["null", T]`` unions, so that dominates
encoding. This module generates, once per schema, straight-line Python source that writes the Avro
binary encoding directly (a ``["null", T]`` union is one branch test; short strings and enum symbols
are one append) and ``exec`` s it: about 3x faster than fastavro on canonical records, and about 1.8x
faster again than the nested closures an earlier version compiled. Every Avro record of affluent —
raw, canonical, dead letter, national — is written through it.

Safety rule: the compiled writer is only trusted to be *fast*, never to be *lenient*. Whenever a value
does not fit what it expects (wrong type, unknown enum symbol, an int out of range) it raises, and the
caller falls back to fastavro, which either encodes the record or reports the error. A field missing
from the record takes its schema default, as fastavro does; without a default it raises KeyError.
Schemas using constructs it does not compile (general unions, fixed, decimals, …) are never compiled
at all (:class:`NotCompilable`). Tests check byte-for-byte equality with fastavro on every golden
record and on generated ones.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class NotCompilable(Exception):
    """The schema uses a construct this writer does not handle; use fastavro for it."""


def write_long(out: bytearray, n: int) -> None:
    """Zig-zag varint; raises TypeError for anything but an int (or bool, as fastavro accepts)."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_int(out: bytearray, n: int) -> None:
    if not _INT_MIN <= n <= _INT_MAX:
        raise OverflowError("int out of range")
    write_long(out, n)


def _long_bytes(n: int) -> bytes:
    out = bytearray()
    write_long(out, n)
    return bytes(out)


def _write_bytes(out: bytearray, data: bytes) -> None:
    if not isinstance(data, bytes | bytearray):
        raise TypeError("bytes expected")
    write_long(out, len(data))
    out += data


def _micros(value: Any) -> int:
    if type(value) is datetime and value.tzinfo is not None:
        delta: timedelta = value - _EPOCH
        return delta // _MICROSECOND
    if type(value) is int:
        return value
    raise TypeError("aware datetime or microseconds expected")  # fastavro decides the rest


# Source templates per primitive; {v} is the value's variable, ``out``/``ap`` the buffer and its append.
_PRIMITIVES = {
    "int": "_wi(out, {v})",
    "long": "_wl(out, {v})",
    # inlined: most strings are short, and a call per string is a fair share of the writer's time
    "string": "b = {v}.encode(); n = len(b)\nif n < 64: ap(n << 1)\nelse: _wl(out, n)\nout += b",
    "bytes": "_wb(out, {v})",
    "boolean": "if {v} is True: ap(1)\nelif {v} is False: ap(0)\nelse: raise TypeError('boolean expected')",
    "double": "out += _pd({v})",
    "float": "out += _pf({v})",
}


def compile_writer(schema: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bytes]:
    """Compile a (JSON-parsed, not fastavro-parsed) record schema into ``encode(record) -> bytes``;
    raises NotCompilable when it cannot."""
    namespace: dict[str, Any] = {
        "_wl": write_long,
        "_wi": _write_int,
        "_wb": _write_bytes,
        "_pd": struct.Struct("<d").pack,
        "_pf": struct.Struct("<f").pack,
        "_ts": _micros,
    }
    named: dict[str, Any] = {}
    counter = iter(range(1, 1_000_000))
    lines: list[str] = []

    def emit(avro: Any, var: str, indent: str, depth: int) -> None:
        if depth > 32:
            raise NotCompilable("schema nests deeper than 32 levels (recursive?)")
        if isinstance(avro, str):
            if avro == "null":
                lines.append(f"{indent}if {var} is not None: raise TypeError('null expected')")
                return
            if avro in _PRIMITIVES:
                lines.extend(indent + line for line in _PRIMITIVES[avro].format(v=var).split("\n"))
                return
            if avro.rsplit(".", 1)[-1] in named:
                emit(named[avro.rsplit(".", 1)[-1]], var, indent, depth + 1)
                return
            raise NotCompilable(f"unknown type name {avro}")
        if isinstance(avro, list):
            branches = [b for b in avro if b != "null"]
            if len(avro) != 2 or len(branches) != 1:
                raise NotCompilable("only unions of null and one type are compiled")
            null_index = avro.index("null")
            lines.append(f"{indent}if {var} is None:")
            lines.append(f"{indent}    ap({null_index * 2})")  # zigzag of the branch index
            lines.append(f"{indent}else:")
            lines.append(f"{indent}    ap({(1 - null_index) * 2})")
            emit(branches[0], var, indent + "    ", depth + 1)
            return
        kind = avro.get("type")
        logical = avro.get("logicalType")
        if logical is not None:
            if logical == "timestamp-micros" and kind == "long":
                lines.append(f"{indent}_wl(out, _ts({var}))")
                return
            raise NotCompilable(f"logical type {logical} is not compiled")
        if kind == "record":
            named.setdefault(avro["name"], avro)
            for field in avro["fields"]:
                item = f"v{next(counter)}"
                if "default" in field:
                    default = f"_d{next(counter)}"
                    namespace[default] = field["default"]
                    lines.append(f"{indent}{item} = {var}.get({field['name']!r}, {default})")
                else:  # a missing field raises KeyError: fastavro then decides (and names it)
                    lines.append(f"{indent}{item} = {var}[{field['name']!r}]")
                emit(field["type"], item, indent, depth + 1)
            return
        if kind == "enum":
            named.setdefault(avro["name"], avro)
            table = f"_e{next(counter)}"
            namespace[table] = {symbol: _long_bytes(i) for i, symbol in enumerate(avro["symbols"])}
            lines.append(f"{indent}out += {table}[{var}]")
            return
        if kind == "array":
            item = f"v{next(counter)}"
            lines.append(f"{indent}if {var}.__class__ is not list:")
            lines.append(f"{indent}    raise TypeError('list expected')")
            lines.append(f"{indent}if {var}:")
            lines.append(f"{indent}    _wl(out, len({var}))")
            lines.append(f"{indent}    for {item} in {var}:")
            emit(avro["items"], item, indent + "        ", depth + 1)
            lines.append(f"{indent}ap(0)")
            return
        if kind == "map":
            key, item = f"k{next(counter)}", f"v{next(counter)}"
            lines.append(f"{indent}if {var}.__class__ is not dict:")
            lines.append(f"{indent}    raise TypeError('dict expected')")
            lines.append(f"{indent}if {var}:")
            lines.append(f"{indent}    _wl(out, len({var}))")
            lines.append(f"{indent}    for {key}, {item} in {var}.items():")
            emit("string", key, indent + "        ", depth + 1)
            emit(avro["values"], item, indent + "        ", depth + 1)
            lines.append(f"{indent}ap(0)")
            return
        if isinstance(kind, str | list | dict) and set(avro) <= {"type", "doc"}:
            emit(kind, var, indent, depth + 1)
            return
        raise NotCompilable(f"type {kind} is not compiled")

    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise NotCompilable("only record schemas are compiled")
    emit(dict(schema), "v0", "    ", 0)
    source = "def encode(v0):\n    out = bytearray()\n    ap = out.append\n" + "\n".join(lines)
    source += "\n    return bytes(out)\n"
    # Our own generated source, from a schema (never from data).
    exec(compile(source, f"<avro writer {schema.get('name')}>", "exec"), namespace)
    encode: Callable[[Mapping[str, Any]], bytes] = namespace["encode"]
    return encode
