"""A registered Avro record crosses the real broker and the real registry in the Confluent wire format."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from affluent.core.errors import SchemaError
from affluent.core.kafka import make_producer
from affluent.core.topics import value_subject
from affluent.sim.demo import demo_record
from schemas.registry import AvroCodec, load_schema

pytestmark = pytest.mark.integration


def test_raw_record_round_trip_through_registry(live_kafka, registry, new_topic, reader):
    topic = new_topic("it.raw")
    codec = AvroCodec(registry, value_subject(topic), load_schema("raw_message"), "BACKWARD")
    records = []
    for i in range(5):
        rec = demo_record()
        rec["message_id"] = f"MSG{i}"
        rec["raw_id"] = uuid.uuid4().hex
        rec["received_at"] = datetime(2026, 11, 24, 9, 0, i, 123456, tzinfo=UTC)
        records.append(rec)
    producer = make_producer(live_kafka)
    errors = []
    for rec in records:
        producer.produce(
            topic, key=b"FAC|APP", value=codec.encode(rec), on_delivery=lambda e, m: errors.append(e)
        )
    assert producer.flush(15) == 0
    assert errors == [None] * 5

    got = reader(topic, expected=5)
    assert len(got) == 5
    for (key, value), sent in zip(got, records, strict=True):
        assert key == b"FAC|APP"
        assert value[0] == 0  # Confluent magic byte
        assert struct.unpack(">I", value[1:5])[0] == codec.schema_id
        assert codec.decode(value) == sent

    # The registry knows the subject, and confluent-kafka's own deserializer reads our bytes.
    assert registry.has_subject(value_subject(topic))
    theirs = AvroDeserializer(registry.client)(got[0][1], SerializationContext(topic, MessageField.VALUE))
    assert theirs["message_id"] == "MSG0"
    assert theirs["payload"] == records[0]["payload"]


def test_compatibility_is_enforced_by_the_registry(registry):
    subject = f"it.compat.{uuid.uuid4().hex[:8]}-value"
    v1 = '{"type":"record","name":"R","namespace":"t","fields":[{"name":"a","type":"string"}]}'
    breaking = '{"type":"record","name":"R","namespace":"t","fields":[{"name":"a","type":"int"}]}'
    compatible = (
        '{"type":"record","name":"R","namespace":"t","fields":[{"name":"a","type":"string"},'
        '{"name":"b","type":["null","string"],"default":null}]}'
    )
    registry.register(subject, v1, "FULL_TRANSITIVE")
    assert registry.get_compatibility(subject) == "FULL_TRANSITIVE"
    assert registry.is_compatible(subject, compatible)
    assert not registry.is_compatible(subject, breaking)


def test_encoding_error_names_the_field_not_the_value(registry, new_topic):
    topic = new_topic("it.enc")
    codec = AvroCodec(registry, value_subject(topic), load_schema("raw_message"))
    rec = demo_record()
    rec["source_facility"] = 12345678  # wrong type: must be reported without the value
    rec["message_id"] = "CANARY-DUPONT-Zoé"
    with pytest.raises(SchemaError) as info:
        codec.encode(rec)
    assert "12345678" not in str(info.value)
    assert "DUPONT" not in str(info.value)
    assert "RawMessage" in str(info.value)


def test_a_truncated_value_is_a_schema_error_from_both_readers(registry, new_topic):
    # The compiled reader refuses it, fastavro then reports it: never a struct/index error, never a
    # record read from half the bytes.
    codec = AvroCodec(registry, value_subject(new_topic("it.dec")), load_schema("raw_message"))
    value = codec.encode(demo_record())
    assert codec.decode(value) == demo_record()
    for cut in (6, len(value) // 2, len(value) - 1):
        with pytest.raises(SchemaError):
            codec.decode(value[:cut])
