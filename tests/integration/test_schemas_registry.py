"""The catalog against the real registry: registration is idempotent and breaking changes are caught.

The registry is shared with other tests, so every test that needs to break something does it on a
subject of its own (``test.<uuid>-value``) and never on a catalog subject.
"""

from __future__ import annotations

import json
import uuid

import pytest

from schemas import catalog as cat
from schemas.catalog import SchemaEntry, check_all, entry_for, register_all
from schemas.registry import load_schema

pytestmark = pytest.mark.integration


def _without_field(schema_text: str, field: str) -> str:
    schema = json.loads(schema_text)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    return json.dumps(schema)


def _retyped(schema_text: str, field: str, new_type: object) -> str:
    schema = json.loads(schema_text)
    for f in schema["fields"]:
        if f["name"] == field:
            f["type"] = new_type
    return json.dumps(schema)


def _with_new_field(schema_text: str, field: dict[str, object]) -> str:
    schema = json.loads(schema_text)
    schema["fields"].append(field)
    return json.dumps(schema)


def _own_entry(schema_name: str = "canonical/observation", prefix: str = "test") -> SchemaEntry:
    return SchemaEntry.for_topic(f"{prefix}.{uuid.uuid4().hex[:12]}", schema_name)


def test_register_all_twice_gives_the_same_ids_and_pins_levels(registry):
    first = register_all(registry)
    second = register_all(registry)
    assert [(e.subject, i) for e, i in first] == [(e.subject, i) for e, i in second]
    assert len(first) == len(cat.catalog())
    for entry, _ in second:
        assert registry.get_compatibility(entry.subject) == entry.compatibility
    # one schema text, one id: the three raw topics share raw_message
    ids = {entry.topic: schema_id for entry, schema_id in first}
    assert ids["ingest.hl7v2.raw"] == ids["ingest.fhir.raw"] == ids["ingest.device.raw"]


def test_check_all_is_all_ok_after_registration(registry):
    register_all(registry)
    results = check_all(registry)
    assert [(r.entry.topic, r.detail) for r in results if not r.ok] == []
    assert all(r.detail.startswith("compatible") for r in results)


def test_a_compatible_evolution_passes(registry):
    entry = _own_entry()
    register_all(registry, [entry])
    evolved = _with_new_field(
        load_schema(entry.schema_name),
        {"name": "note_code", "type": ["null", "string"], "default": None, "doc": "A later optional field."},
    )
    assert registry.is_compatible(entry.subject, evolved)
    [result] = check_all(registry, [entry], text_for=lambda e: evolved)
    assert result.ok, result.detail


REMOVE_REQUIRED = pytest.param(lambda text: _without_field(text, "status"), id="required-field-removed")
RETYPE = pytest.param(lambda text: _retyped(text, "status", "int"), id="field-type-changed")
ADD_REQUIRED = pytest.param(
    lambda text: _with_new_field(text, {"name": "unit_x", "type": "string", "doc": "No default."}),
    id="required-field-added",
)


def _assert_refused(registry, entry, breaking):
    original = load_schema(entry.schema_name)
    register_all(registry, [entry])
    candidate = breaking(original)

    assert registry.is_compatible(entry.subject, original)
    assert not registry.is_compatible(entry.subject, candidate)
    [result] = check_all(registry, [entry], text_for=lambda e: candidate)
    assert not result.ok
    assert "incompatible" in result.detail


@pytest.mark.parametrize("breaking", [RETYPE, ADD_REQUIRED])
def test_a_backward_incompatible_change_is_refused_on_an_internal_subject(registry, breaking):
    """BACKWARD: the new schema must read old data, so a retyped or new required field breaks it."""
    _assert_refused(registry, _own_entry(), breaking)


@pytest.mark.parametrize("breaking", [REMOVE_REQUIRED, RETYPE, ADD_REQUIRED])
def test_any_one_way_change_is_refused_on_a_national_subject(registry, breaking):
    """FULL_TRANSITIVE: old readers must read new data too, so dropping a required field breaks it."""
    _assert_refused(registry, _own_entry(prefix="national.test"), breaking)


def test_dropping_a_required_field_is_allowed_on_an_internal_subject(registry):
    """Under BACKWARD a new reader simply ignores the old field: canonical consumers upgrade first."""
    entry = _own_entry()
    register_all(registry, [entry])
    candidate = _without_field(load_schema(entry.schema_name), "status")
    [result] = check_all(registry, [entry], text_for=lambda e: candidate)
    assert result.ok, result.detail


def test_check_all_finds_a_break_with_an_older_version_under_full_transitive(registry):
    """A change compatible with the latest version but not with the first must fail a national subject."""
    entry = _own_entry("canonical/procedure", prefix="national.test")
    assert entry.compatibility == "FULL_TRANSITIVE"
    v1 = load_schema(entry.schema_name)
    # v2 gives the required 'status' a default (fully compatible), v3 then drops it: fine next to v2,
    # but a v1 reader needs 'status' and has no default for it.
    v2 = json.loads(v1)
    for field in v2["fields"]:
        if field["name"] == "status":
            field["default"] = "unknown"
    v2_text = json.dumps(v2)
    register_all(registry, [entry])
    registry.register(entry.subject, v2_text)
    v3_text = _without_field(v2_text, "status")

    assert registry.is_compatible(entry.subject, v3_text)  # the latest-only check misses it
    [result] = check_all(registry, [entry], text_for=lambda e: v3_text)
    assert not result.ok and "incompatible" in result.detail


def test_check_all_flags_a_subject_guarded_by_a_weaker_level(registry):
    entry = _own_entry("dead_letter")
    registry.register(entry.subject, load_schema(entry.schema_name), "NONE")
    [result] = check_all(registry, [entry])
    assert not result.ok and "NONE" in result.detail
    register_all(registry, [entry])
    [result] = check_all(registry, [entry])
    assert result.ok, result.detail


def test_check_all_reports_a_new_subject_as_not_registered_yet(registry):
    [result] = check_all(registry, [_own_entry()])
    assert result.ok and result.detail == "not registered yet"


def test_catalog_entries_resolve_through_the_registry(registry):
    """What a producer does: look its topic up and register (or find) the schema."""
    entry = entry_for(cat.CANONICAL_OBSERVATION)
    [(_, schema_id)] = register_all(registry, [entry])
    assert registry.writer_schema(schema_id)["name"] == "fr.affluent.canonical.Observation"


def test_has_subject_asks_the_registry_per_subject(registry):
    """Not by listing: Apicurio's subject list stops at 1,000 on a long-lived registry."""
    entry = _own_entry()
    assert registry.has_subject(entry.subject) is False
    register_all(registry, [entry])
    assert registry.has_subject(entry.subject) is True
