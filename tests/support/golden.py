"""Golden-file helpers for the normalize mappers: load a case, compare events as JSON.

Golden files hold the exact expected canonical events, so they must be plain JSON that a reviewer can
read: datetimes become ISO 8601 strings (UTC, "+00:00"), everything else already is JSON-shaped.
The raw context is derived from the message itself (MSH-3, MSH-4, MSH-10) with fixed ingest metadata,
so that event ids in golden files are stable and mean the same as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from formats.hl7.charset import decode
from formats.hl7.er7 import parse
from streams.normalize.envelope import RawContext
from streams.normalize.result import CanonicalEvent, Rejection

GOLDEN_HL7 = Path(__file__).resolve().parent.parent / "golden" / "hl7"
INGEST_TIME = datetime(2024, 9, 30, 12, 0, tzinfo=UTC)
RAW_TOPIC = "ingest.hl7v2.raw"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_jsonable(events: Iterable[CanonicalEvent]) -> list[dict[str, Any]]:
    """Events as the JSON a golden file holds: kind, key and the record with datetimes as ISO text."""
    return [{"kind": e.kind, "key": e.key, "record": _plain(e.record)} for e in events]


def dropped_jsonable(dropped: Iterable[Rejection]) -> list[dict[str, str]]:
    """The parts a partial mapping left out, as a golden ``<case>.dropped.json`` holds them."""
    return [
        {"reason_code": r.reason_code.value, "reason": r.reason, "location": r.location, "rule": r.rule}
        for r in dropped
    ]


def expected_dropped(case: str) -> list[dict[str, str]]:
    """What a case leaves out (``<case>.dropped.json``); none when the file is absent: a whole mapping."""
    path = GOLDEN_HL7 / f"{case}.dropped.json"
    if not path.exists():
        return []
    result: list[dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    return result


def hl7_cases() -> list[str]:
    return sorted(p.stem for p in GOLDEN_HL7.glob("*.hl7"))


def hl7_text(case: str) -> str:
    """The message as the normalizer receives it: bytes decoded per MSH-18, as stage.py does."""
    return decode((GOLDEN_HL7 / f"{case}.hl7").read_bytes()).text


def hl7_context(case: str, text: str, offset: int = 7) -> RawContext:
    message = parse(text)
    return RawContext(
        raw_id=f"raw-{case}",
        protocol="hl7v2",
        connector="mllp",
        facility=message.get("MSH-4.1") or "",
        application=message.get("MSH-3.1") or "",
        message_id=message.control_id,
        received_at=INGEST_TIME,
        topic=RAW_TOPIC,
        partition=0,
        offset=offset,
    )


def expected(case: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads((GOLDEN_HL7 / f"{case}.json").read_text(encoding="utf-8"))
    return result


def dumps(events: list[dict[str, Any]]) -> str:
    """The golden file layout: sorted keys would hide the schema order, so insertion order is kept."""
    return json.dumps(events, ensure_ascii=False, indent=2) + "\n"


# --- Canonical schema checks --------------------------------------------------------------------------
# fastavro ignores unknown keys and coerces some types, so a record can encode and still not be what the
# schema says; these checks are exact: same field names, right Python types, enum symbols, aware UTC times.

_SCHEMA_CACHE: dict[str, tuple[Any, Any]] = {}


def canonical_schema(kind: str) -> tuple[Any, Any]:
    """(raw JSON schema, fastavro parsed schema) of a canonical kind."""
    cached = _SCHEMA_CACHE.get(kind)
    if cached is None:
        from schemas.registry import load_schema, parse_schema

        text = load_schema(f"canonical/{kind}")
        cached = _SCHEMA_CACHE[kind] = (json.loads(text), parse_schema(text))
    return cached


def _fits(value: Any, schema: Any, named: dict[str, Any], namespace: str, path: str) -> list[str]:
    if isinstance(schema, list):
        branch_errors = [_fits(value, branch, named, namespace, path) for branch in schema]
        if any(not errors for errors in branch_errors):
            return []
        return [f"{path}: fits no branch of the union ({branch_errors})"]
    if isinstance(schema, str):
        if schema in named or f"{namespace}.{schema}" in named:
            return _fits(value, named.get(schema) or named[f"{namespace}.{schema}"], named, namespace, path)
        checks = {
            "null": lambda v: v is None,
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
            "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "double": lambda v: isinstance(v, float),
            "float": lambda v: isinstance(v, float),
            "bytes": lambda v: isinstance(v, bytes),
        }
        return [] if checks[schema](value) else [f"{path}: not a {schema}"]
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-micros":
        ok = isinstance(value, datetime) and value.utcoffset() is not None and not value.utcoffset()
        return [] if ok else [f"{path}: not an aware UTC datetime"]
    if kind in ("record", "enum"):
        name = schema["name"]
        namespace = schema.get("namespace", namespace)
        full = name if "." in name else f"{namespace}.{name}"
        named[full] = named[name] = schema
    if kind == "record":
        if not isinstance(value, dict):
            return [f"{path}: not a record"]
        fields = {f["name"]: f["type"] for f in schema["fields"]}
        errors = [f"{path}: unexpected field {k}" for k in value if k not in fields]
        errors += [f"{path}: missing field {k}" for k in fields if k not in value]
        for name, ftype in fields.items():
            if name in value:
                errors += _fits(value[name], ftype, named, namespace, f"{path}.{name}")
        return errors
    if kind == "enum":
        return [] if value in schema["symbols"] else [f"{path}: not a symbol of {schema['name']}"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: not an array"]
        return [
            e
            for i, item in enumerate(value)
            for e in _fits(item, schema["items"], named, namespace, f"{path}[{i}]")
        ]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: not a map"]
        return [
            e for k, v in value.items() for e in _fits(v, schema["values"], named, namespace, f"{path}.{k}")
        ]
    return _fits(value, kind, named, namespace, path)


def _named_types(schema: Any, namespace: str, named: dict[str, Any]) -> dict[str, Any]:
    """Every named type of a schema, under its short and full names (references may precede use)."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, named)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            namespace = schema.get("namespace", namespace)
            name = schema["name"]
            named[name] = named[name if "." in name else f"{namespace}.{name}"] = schema
        for f in schema.get("fields", []):
            _named_types(f["type"], namespace, named)
        for key in ("items", "values"):
            if key in schema:
                _named_types(schema[key], namespace, named)
    return named


def schema_errors(kind: str, record: dict[str, Any]) -> list[str]:
    """Every way the record departs from its canonical schema (empty when it fits exactly)."""
    raw, _ = canonical_schema(kind)
    namespace = raw.get("namespace", "")
    return _fits(record, raw, _named_types(raw, namespace, {}), namespace, kind)


def avro_roundtrip(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """Encode with fastavro as the normalize stage does, then decode: what a consumer would read."""
    import io

    import fastavro

    _, parsed = canonical_schema(kind)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, parsed, parsed)
    assert isinstance(decoded, dict)
    return decoded
