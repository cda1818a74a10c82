"""A schema-compiled Avro binary reader for the hot path, with fastavro as the authority.

fastavro's ``schemaless_reader`` interprets the parsed schema for every value it reads (a dictionary
lookup and a type dispatch per field); on this box that made decoding a canonical observation cost more
than pseudonymizing it. This module turns a writer schema, once, into generated Python source — one
function per named record, straight-line code per field, the one-byte varint inlined — and ``exec`` s it.

Safety rule, as for :mod:`schemas.fastwriter`: the compiled reader is trusted to be *fast*, never to be
*lenient*. Input it does not expect (a union branch out of range, a truncated value, bad UTF-8) raises,
and the caller decodes the same bytes with fastavro, which either succeeds or reports the error.
Schemas using constructs it does not compile (general unions, fixed, logical types other than
``timestamp-micros``, …) are never compiled. It reads with the writer schema only (no schema
resolution): callers that pass a reader schema use fastavro. Tests check equality with fastavro.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.fastwriter import NotCompilable

Reader = Callable[[bytes, int], Any]

_PRIMITIVE_NAMES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _read_long(b: bytes, p: int) -> tuple[int, int]:
    """A zig-zag varint of more than one byte (the generated code inlines the one-byte case)."""
    shift = 0
    n = 0
    while True:
        x = b[p]
        p += 1
        n |= (x & 0x7F) << shift
        if x < 0x80:
            return (n >> 1) ^ -(n & 1), p
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


class _Compiler:
    def __init__(self) -> None:
        self.functions: list[str] = []
        self.named: dict[str, str] = {}  # full name -> generated function or "enum:<const>"
        self.constants: dict[str, Any] = {}
        self.counter = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def long_into(self, var: str, pad: str) -> list[str]:
        return [
            f"{pad}x = b[p]",
            f"{pad}if x < 128:",
            f"{pad}    {var} = (x >> 1) ^ -(x & 1)",
            f"{pad}    p += 1",
            f"{pad}else:",
            f"{pad}    {var}, p = _read_long(b, p)",
        ]

    def emit(self, schema: Any, var: str, pad: str, ns: str) -> list[str]:
        """Lines that read one value of ``schema`` into ``var`` and advance ``p``."""
        if isinstance(schema, str):
            if schema in _PRIMITIVE_NAMES:
                return self.primitive(schema, var, pad)
            for name in (schema, f"{ns}.{schema}"):
                if name in self.named:
                    return self.reference(self.named[name], var, pad)
            raise NotCompilable(f"type {schema}")
        if isinstance(schema, list):
            if len(schema) == 2 and schema[0] == "null":
                inner = self.emit(schema[1], var, pad + "    ", ns)
                return [
                    f"{pad}x = b[p]",
                    f"{pad}p += 1",
                    f"{pad}if x == 0:",
                    f"{pad}    {var} = None",
                    f"{pad}elif x == 2:",
                    *inner,
                    f"{pad}else:",
                    f"{pad}    raise ValueError('union branch')",
                ]
            raise NotCompilable("general union")
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical == "timestamp-micros" and kind == "long":
            return [*self.long_into(var, pad), f"{pad}{var} = _EPOCH + _TD(microseconds={var})"]
        if logical is not None:
            raise NotCompilable(f"logical type {logical}")
        if kind == "record":
            return self.reference(self.record(schema, ns), var, pad)
        if kind == "enum":
            return self.reference(self.enum(schema, ns), var, pad)
        if kind == "array":
            item = self.fresh("i")
            item_pad = pad + "        "
            body = [*self.emit(schema["items"], item, item_pad, ns), f"{item_pad}{var}.append({item})"]
            return [f"{pad}{var} = []", *self.blocks(body, pad)]
        if kind == "map":
            item, key = self.fresh("m"), self.fresh("k")
            item_pad = pad + "        "
            body = [
                *self.primitive("string", key, item_pad),
                *self.emit(schema["values"], item, item_pad, ns),
                f"{item_pad}{var}[{key}] = {item}",
            ]
            return [f"{pad}{var} = {{}}", *self.blocks(body, pad)]
        if kind in _PRIMITIVE_NAMES:
            return self.primitive(kind, var, pad)
        raise NotCompilable(f"type {kind}")

    def blocks(self, body: list[str], pad: str) -> list[str]:
        """Avro's block encoding of arrays and maps: counted blocks until a zero count; a negative
        count is followed by the block's size in bytes. ``body`` reads one item (indented twice)."""
        count = self.fresh("c")
        return [
            f"{pad}while True:",
            *self.long_into(count, pad + "    "),
            f"{pad}    if {count} == 0:",
            f"{pad}        break",
            f"{pad}    if {count} < 0:",
            f"{pad}        {count} = -{count}",
            f"{pad}        _size, p = _read_long(b, p)",
            f"{pad}    for _ in range({count}):",
            *body,
        ]

    def primitive(self, kind: str, var: str, pad: str) -> list[str]:
        if kind == "null":
            return [f"{pad}{var} = None"]
        if kind == "boolean":
            return [f"{pad}{var} = b[p] == 1", f"{pad}p += 1"]
        if kind in ("int", "long"):
            return self.long_into(var, pad)
        if kind == "double":
            return [f"{pad}{var} = _DOUBLE(b, p)[0]", f"{pad}p += 8"]
        if kind == "float":
            return [f"{pad}{var} = _FLOAT(b, p)[0]", f"{pad}p += 4"]
        n = self.fresh("n")
        read = self.long_into(n, pad)
        end = f"{pad}if p + {n} > len(b) or {n} < 0:\n{pad}    raise ValueError('truncated')"
        if kind == "bytes":
            return [*read, end, f"{pad}{var} = b[p:p + {n}]", f"{pad}p += {n}"]
        return [*read, end, f"{pad}{var} = b[p:p + {n}].decode()", f"{pad}p += {n}"]

    def reference(self, target: str, var: str, pad: str) -> list[str]:
        if target.startswith("enum:"):
            const = target.removeprefix("enum:")
            index = self.fresh("e")
            return [*self.long_into(index, pad), f"{pad}{var} = {const}[{index}]"]
        return [f"{pad}{var}, p = {target}(b, p)"]

    def record(self, schema: dict[str, Any], ns: str) -> str:
        space = schema.get("namespace", ns)
        name = schema["name"]
        full = name if "." in name else f"{space}.{name}" if space else name
        function = self.fresh("_record")
        self.named[full] = self.named[name] = function
        fields = schema["fields"]
        names = [self.fresh("f") for _ in fields]
        body: list[str] = []
        for field, var in zip(fields, names, strict=True):
            body += self.emit(field["type"], var, "    ", space)
        pairs = ", ".join(f"{field['name']!r}: {var}" for field, var in zip(fields, names, strict=True))
        self.functions.append("\n".join([f"def {function}(b, p):", *body, f"    return {{{pairs}}}, p"]))
        return function

    def enum(self, schema: dict[str, Any], ns: str) -> str:
        space = schema.get("namespace", ns)
        name = schema["name"]
        const = self.fresh("_SYMBOLS")
        self.constants[const] = tuple(schema["symbols"])
        target = f"enum:{const}"
        full = name if "." in name else f"{space}.{name}" if space else name
        self.named[full] = self.named[name] = target
        return target


def compile_reader(schema: Any) -> Callable[[bytes, int], Any]:
    """Compile a (JSON-parsed) writer schema into ``read(data, offset) -> value``; raises NotCompilable."""
    compiler = _Compiler()
    root = compiler.emit(schema, "value", "    ", "")
    source = "\n\n".join([*compiler.functions, "\n".join(["def read(b, p):", *root, "    return value"])])
    scope: dict[str, Any] = {
        "_read_long": _read_long,
        "_EPOCH": datetime(1970, 1, 1, tzinfo=UTC),
        "_TD": timedelta,
        "_DOUBLE": struct.Struct("<d").unpack_from,
        "_FLOAT": struct.Struct("<f").unpack_from,
        **compiler.constants,
    }
    name = schema.get("name", "?") if isinstance(schema, dict) else "?"
    # Our own generated source, from a registered schema (never from data).
    exec(compile(source, f"<avro reader {name}>", "exec"), scope)
    read: Callable[[bytes, int], Any] = scope["read"]
    return read
