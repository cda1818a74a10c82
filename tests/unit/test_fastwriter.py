"""The compiled Avro writer produces exactly fastavro's bytes, and never accepts what fastavro would refuse."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from affluent.sim.demo import demo_record
from formats.reasons import ReasonCode
from schemas.deadletter import dead_letter_record
from schemas.fastwriter import NotCompilable, compile_writer
from schemas.registry import load_schema
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CTX = RawContext(
    "raw-1", "hl7v2", "mllp", "CHU", "PAS", "M1", datetime(2026, 3, 1, 9, 0, tzinfo=UTC), "t", 0, 7
)


def fastavro_bytes(schema_text: str, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(schema_text)), record)
    return buf.getvalue()


def golden_events():
    options = MappingOptions()
    for path in sorted((GOLDEN / "hl7").glob("*.hl7")):
        yield from map_hl7(path.read_bytes().decode("latin-1"), CTX, options)
    for path in sorted((GOLDEN / "fhir").glob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        try:
            yield from map_fhir(path.read_bytes(), CTX, options)
        except Exception:
            continue


def test_byte_identical_to_fastavro_on_every_golden_record():
    compared = 0
    writers: dict[str, object] = {}
    for event in golden_events():
        text = load_schema(f"canonical/{event.kind}")
        write = writers.setdefault(event.kind, compile_writer(json.loads(text)))
        assert write(event.record) == fastavro_bytes(text, event.record), event.kind  # type: ignore[operator]
        compared += 1
    assert compared >= 60


def test_byte_identical_on_raw_and_dead_letter_records():
    for name, record in (
        ("raw_message", demo_record()),
        (
            "dead_letter",
            dead_letter_record(
                stage="ingest", reason_code=ReasonCode.UNPARSABLE, reason="y", payload=b"\x00\xff"
            ),
        ),
        (
            "dead_letter",
            dead_letter_record(
                stage="normalize",
                reason_code=ReasonCode.UNPARSABLE,
                reason="y",
                lineage={"topic": "t", "partition": 1, "offset": 2**40},
                attributes={"a": "é"},
            ),
        ),
    ):
        text = load_schema(name)
        assert compile_writer(json.loads(text))(record) == fastavro_bytes(text, record)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("protocol", 5),
        ("payload", "text"),
        ("received_at", datetime(2026, 1, 1)),
        ("charset_mismatch", "yes"),
        ("attributes", []),
    ],
)
def test_wrong_types_raise_instead_of_writing(field, value):
    write = compile_writer(json.loads(load_schema("raw_message")))
    record = demo_record()
    record[field] = value
    with pytest.raises((TypeError, KeyError, ValueError, AttributeError)):
        write(record)


def test_a_missing_field_takes_its_default_as_fastavro_does_and_without_one_raises():
    text = load_schema("raw_message")
    record = demo_record()
    del record["attributes"]  # has a default ({})
    assert compile_writer(json.loads(text))(record) == fastavro_bytes(text, record)
    del record["raw_id"]  # has none: fastavro must decide (and name the field)
    with pytest.raises(KeyError):
        compile_writer(json.loads(text))(record)


def test_general_unions_are_not_compiled():
    with pytest.raises(NotCompilable):
        compile_writer({"type": "record", "name": "R", "fields": [{"name": "a", "type": ["int", "string"]}]})
