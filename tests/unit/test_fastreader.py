"""The compiled Avro reader returns exactly what fastavro returns, and refuses what it cannot read."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affluent.sim.demo import demo_record
from schemas.fastreader import compile_reader
from schemas.fastwriter import NotCompilable
from schemas.registry import load_schema
from tests.unit.test_fastwriter import fastavro_bytes, golden_events

AVRO = Path(__file__).resolve().parents[2] / "schemas" / "avro"


def fastavro_read(schema_text: str, data: bytes) -> object:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(json.loads(schema_text)), None)


def test_equal_to_fastavro_on_every_golden_record():
    compared = 0
    for event in golden_events():
        text = load_schema(f"canonical/{event.kind}")
        data = fastavro_bytes(text, event.record)
        assert compile_reader(json.loads(text))(data, 0) == fastavro_read(text, data), event.kind
        compared += 1
    assert compared >= 60


def test_reads_from_an_offset_like_the_confluent_frame():
    text = load_schema("raw_message")
    data = fastavro_bytes(text, demo_record())
    framed = b"\x00\x00\x00\x00\x07" + data
    assert compile_reader(json.loads(text))(framed, 5) == fastavro_read(text, data)


def test_every_schema_of_the_catalog_compiles():
    for path in sorted(AVRO.rglob("*.avsc")):
        compile_reader(json.loads(path.read_text()))  # none uses a construct the reader lacks


SCHEMA = {
    "type": "record",
    "name": "T",
    "namespace": "t",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "o", "type": ["null", "long"]},
        {"name": "d", "type": "double"},
        {"name": "flag", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "again", "type": ["null", "E"]},
        {"name": "xs", "type": {"type": "array", "items": "string"}},
        {"name": "m", "type": {"type": "map", "values": "int"}},
        {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
    ],
}


@settings(max_examples=200, deadline=None)
@given(
    s=st.text(),
    o=st.none() | st.integers(-(2**63), 2**63 - 1),
    d=st.floats(allow_nan=False),
    flag=st.booleans(),
    raw=st.binary(),
    e=st.sampled_from(["A", "B", "C"]),
    again=st.none() | st.sampled_from(["A", "C"]),
    xs=st.lists(st.text(max_size=5), max_size=200),
    m=st.dictionaries(st.text(max_size=5), st.integers(-(2**31), 2**31 - 1), max_size=5),
    when=st.none() | st.integers(-(2**50), 2**50),
)
def test_random_values_read_back_as_fastavro_reads_them(s, o, d, flag, raw, e, again, xs, m, when):
    from datetime import UTC, datetime, timedelta

    record = {
        "s": s,
        "o": o,
        "d": d,
        "flag": flag,
        "raw": raw,
        "e": e,
        "again": again,
        "xs": xs,
        "m": m,
        "when": None if when is None else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=when),
    }
    text = json.dumps(SCHEMA)
    data = fastavro_bytes(text, record)
    assert compile_reader(SCHEMA)(data, 0) == fastavro_read(text, data) == record


def test_truncated_or_corrupt_input_raises_instead_of_inventing_values():
    read = compile_reader(SCHEMA)
    record = {
        "s": "abc",
        "o": 5,
        "d": 1.5,
        "flag": True,
        "raw": b"x",
        "e": "B",
        "again": None,
        "xs": ["a"],
        "m": {"k": 1},
        "when": None,
    }
    data = fastavro_bytes(json.dumps(SCHEMA), record)
    for cut in range(len(data)):  # every proper prefix is refused, none is read as a record
        with pytest.raises((ValueError, IndexError, struct.error)):
            read(data[:cut], 0)
    with pytest.raises(ValueError):
        read(data[:4] + b"\x06" + data[5:], 0)  # union branch 3 of a two-branch union


def test_general_unions_are_not_compiled():
    with pytest.raises(NotCompilable):
        compile_reader({"type": "record", "name": "U", "fields": [{"name": "u", "type": ["string", "long"]}]})
