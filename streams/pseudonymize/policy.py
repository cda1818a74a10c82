"""Per-destination de-identification policies: YAML read, checked against the canonical schemas, compiled.

Modelled on Microsoft's Tools for Health Data Anonymization: what leaves the hospital is declared, path
by path, in a file a data-protection officer can read and sign — not spread through code. The policy is
an allow-list: a canonical field nobody named is not sent, so a field added to the canonical model later
stays home until someone decides otherwise.

Everything that can be wrong with a policy is found when it is loaded — an unknown field (checked
against the ``.avsc`` field tree of the kind), an unknown method or context, a missing parameter, a
method that does not fit the field's type, a direct identifier kept, free text sent, no key configured —
and reported as a :class:`PolicyError` naming the file, the kind, the path and the problem. The checked
policy is then compiled into one closure per field, so the per-record work never parses a path.

Paths: dotted into nested records, ``[]`` to go into the items of a list (``names[].family``,
``components[].value_quantity.value``). ``keep`` on a record keeps each of its fields except free text;
a record holding a direct identifier must be listed field by field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from affluent.core.errors import ConfigError
from schemas.registry import load_schema
from streams.normalize.result import CANONICAL_KINDS
from streams.pseudonymize.methods import (
    LeafType,
    MethodError,
    MethodSpec,
    Op,
    RecordContext,
    build_op,
    check_applicable,
    describe,
    output_type,
    parse_method,
)
from streams.pseudonymize.pseudonym import CONTEXT_EVENT, CONTEXT_PATIENT

NATIONAL_MAJOR = 1
DEFAULT_TIMEZONE = "Europe/Paris"
NATIONAL_NAMESPACE = "fr.affluent.national"

# Records a policy may not look into: the patient and visit blocks only ever leave as pseudonyms.
OPAQUE_RECORDS = frozenset({"PatientRef", "Ipp", "Ins", "EncounterRef"})
# Free text: may hold anything a person typed, names included. Only ever dropped; skipped by record keeps.
FREE_TEXT = frozenset(
    {
        ("Coding", "display"),
        ("ObservationCode", "display"),
        ("Observation", "value_string"),
        ("Component", "value_string"),
        ("ReferenceRange", "text"),
        ("DiagnosticReport", "conclusion"),
    }
)
# Direct identifiers with no useful pseudonymized or generalized form: only ever dropped.
DROP_ONLY = frozenset(
    {
        ("HumanName", "*"),
        ("ContactPoint", "*"),
        ("Address", "lines"),
        ("Address", "city"),
        ("Patient", "merged_into"),  # a hospital key IPP@authority
    }
)
# Identifying as they are, useful transformed: may be pseudonymized, generalized or shifted, never kept.
NEVER_KEPT = frozenset(
    {
        ("Patient", "birth_date"),
        ("Patient", "birth_place_code"),
        ("Patient", "death_date"),
        ("Address", "postal_code"),
        ("Device", "id"),
        ("Movement", "movement_id"),
        ("Retraction", "target_source_reference"),
        ("Envelope", "event_id"),
        ("Lineage", "raw_id"),
        ("DiagnosticReport", "result_event_ids"),
        ("Retraction", "target_event_ids"),
    }
)
# Set by the transform, not by the policy: the national envelope's schema_version is the topic's major.
TRANSFORM_OWNED = frozenset({("Envelope", "schema_version")})

_PATH_SEGMENT = re.compile(r"([a-z_][a-z0-9_]*)(\[\])?")
_DESTINATION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TOP_KEYS = frozenset(
    {"destination", "version", "description", "key", "timezone", "date_shift", "common", "types", "select"}
)
_SHIPPED = ("hdh", "inca")


class PolicyError(ConfigError):
    """A policy that cannot be used. Names file, kind, path and problem — policies hold no patient data,
    and neither does this text."""

    def __init__(self, file: str, problem: str, kind: str = "", path: str = "") -> None:
        self.file, self.kind, self.path, self.problem = file, kind, path, problem
        where = ": ".join(part for part in (f"policy {file}", kind, path) if part)
        super().__init__(f"{where}: {problem}")


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


@dataclass
class Policy:
    destination: str
    version: int
    key_name: str
    timezone: ZoneInfo
    max_shift_days: int
    source: str
    plans: dict[str, KindPlan]
    description: str = ""
    # kind → ((top-level field, accepted values), …): records of that kind are sent only if all match
    select: dict[str, tuple[tuple[str, frozenset[str]], ...]] = field(default_factory=dict)

    def sends(self, kind: str) -> bool:
        return kind in self.plans

    def selects(self, kind: str, record: Mapping[str, Any]) -> bool:
        """Whether a record of a sent kind is for this destination (e.g. laboratory observations only)."""
        rules = self.select.get(kind)
        return rules is None or all(record.get(name) in values for name, values in rules)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.plans)

    def topic_for(self, kind: str) -> str:
        return national_topic(self.destination, kind)

    def schema_name_for(self, kind: str) -> str:
        return national_schema_name(self.destination, kind)

    def schema(self, kind: str) -> dict[str, Any]:
        """The national Avro schema this policy's output for ``kind`` fits (the shipped .avsc must match)."""
        return derive_schema(self, kind)


def national_topic(destination: str, kind: str) -> str:
    return f"national.{destination}.{kind}.v{NATIONAL_MAJOR}"


def national_schema_name(destination: str, kind: str) -> str:
    return f"national/{destination}/{kind}_v{NATIONAL_MAJOR}"


# ------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; in a policy that would hide a contradiction."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def shipped_policy_path(name: str) -> Path:
    return Path(str(resources.files("streams.pseudonymize").joinpath("policies", f"{name}.yaml")))


def load_policy(source: str | Path) -> Policy:
    """A shipped policy by name (``hdh``, ``inca``) or any policy file by path, checked and compiled."""
    path = shipped_policy_path(str(source)) if str(source) in _SHIPPED else Path(source)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(name, f"cannot be read ({type(exc).__name__})") from None
    return parse_policy(text, name)


def parse_policy(text: str, file: str = "<policy>") -> Policy:
    problem = ""
    data: Any = None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = f"is not valid YAML{where}: {exc.problem}"
    except yaml.YAMLError:
        problem = "is not valid YAML"
    if problem:
        raise PolicyError(file, problem)
    return _build_policy(data, file)


def _build_policy(data: Any, file: str) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(file, "must be a mapping with destination, version, key and types")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise PolicyError(
            file, f"unknown top-level entry {unknown[0]!r}; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    destination = data.get("destination")
    if not isinstance(destination, str) or not _DESTINATION.fullmatch(destination):
        raise PolicyError(
            file, "destination must be a lowercase name (letters, digits, '_'): it names topics"
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyError(file, "version must be a whole number from 1")
    key = data.get("key")
    if not isinstance(key, dict) or not isinstance(key.get("name"), str) or not key["name"]:
        raise PolicyError(
            file, "missing key configuration: 'key: {name: <key ring>}' names the keys this feed uses"
        )
    if set(key) - {"name"}:
        raise PolicyError(file, f"key: unknown entry {sorted(set(key) - {'name'})[0]!r}")
    zone_name = data.get("timezone", DEFAULT_TIMEZONE)
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(file, f"unknown timezone {zone_name!r}") from None
    max_shift = 0
    if "date_shift" in data:
        shift = data["date_shift"]
        days = shift.get("max_days") if isinstance(shift, dict) else None
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
            raise PolicyError(file, "date_shift.max_days must be a whole number of days from 1 to 3650")
        max_shift = days
    common = data.get("common") or {}
    if not isinstance(common, dict):
        raise PolicyError(file, "common must map field paths to methods")
    types = data.get("types")
    if not isinstance(types, dict) or not types:
        raise PolicyError(file, "types must map each canonical kind sent to its fields")
    plans: dict[str, KindPlan] = {}
    for kind, fields in types.items():
        if kind not in CANONICAL_KINDS:
            raise PolicyError(file, f"unknown canonical kind; known: {', '.join(CANONICAL_KINDS)}", str(kind))
        if not isinstance(fields, dict):
            raise PolicyError(file, "must map field paths to methods", kind)
        for path in fields:
            if path in common:
                raise PolicyError(file, "also given in common; give a path once", kind, str(path))
        root = _build_tree(file, kind, common, fields, zone)
        if max_shift == 0 and _uses_date_shift(root):
            raise PolicyError(file, "uses date_shift but the policy has no 'date_shift: {max_days: N}'", kind)
        reference = _compile(root, zone)
        plans[kind] = KindPlan(
            kind,
            national_topic(destination, kind),
            national_schema_name(destination, kind),
            root,
            _generate(root, kind),
            reference,
        )
    select = _parse_select(file, data.get("select"), plans)
    return Policy(
        destination=destination,
        version=version,
        key_name=key["name"],
        timezone=zone,
        max_shift_days=max_shift or 1,
        source=file,
        plans=plans,
        description=str(data.get("description", "")),
        select=select,
    )


def _parse_select(
    file: str, raw: Any, plans: Mapping[str, KindPlan]
) -> dict[str, tuple[tuple[str, frozenset[str]], ...]]:
    """``select: {observation: {category: [laboratory]}}`` — which records of a kind go, by code fields.

    Only top-level text or enum fields may select: a selection on a nested or free-text field would be
    a content rule hidden in a policy, which is not what a reader of it expects.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PolicyError(file, "select must map kinds to {field: [accepted values]}")
    out: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {}
    for kind, rules in raw.items():
        if kind not in plans:
            raise PolicyError(file, "select names a kind that types does not send", str(kind), "select")
        if not isinstance(rules, dict) or not rules:
            raise PolicyError(file, "select must map fields to lists of accepted values", kind, "select")
        root, _ = canonical_tree(kind)
        parsed: list[tuple[str, frozenset[str]]] = []
        for name, values in rules.items():
            canon = root.fields.get(str(name))
            if canon is None or canon.leaf.array or canon.leaf.base not in ("string", "enum"):
                raise PolicyError(
                    file, "select applies to top-level code fields (text or enum)", kind, f"select.{name}"
                )
            if (root.name, canon.name) in FREE_TEXT:
                raise PolicyError(file, "free text cannot select records", kind, f"select.{name}")
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise PolicyError(
                    file, "accepted values must be a non-empty list of codes", kind, f"select.{name}"
                )
            parsed.append((canon.name, frozenset(values)))
        out[kind] = tuple(parsed)
    return out


def _build_tree(
    file: str, kind: str, common: Mapping[Any, Any], fields: Mapping[Any, Any], zone: ZoneInfo
) -> OutNode:
    root_record, _ = canonical_tree(kind)
    root = OutNode(root_record, "")
    for label, entries in ((f"{kind} (common)", common), (kind, fields)):
        for path, raw in entries.items():
            if not isinstance(path, str):
                raise PolicyError(file, "field paths are text", label, str(path))
            try:
                spec = parse_method(raw)
            except MethodError as exc:
                raise PolicyError(file, str(exc), label, path) from None
            _place(file, label, root, path, spec)
    _check_required(file, kind, root)
    _check_not_empty(file, kind, root)
    return root


def _place(file: str, kind: str, root: OutNode, path: str, spec: MethodSpec) -> None:
    segments = path.split(".")
    node = root
    for i, segment in enumerate(segments):
        match = _PATH_SEGMENT.fullmatch(segment)
        if match is None:
            raise PolicyError(file, "a path is field names joined by '.', with [] after a list", kind, path)
        name, brackets = match.group(1), bool(match.group(2))
        here = ".".join(segments[: i + 1])
        canon = node.record.fields.get(name)
        if canon is None:
            known = ", ".join(node.record.fields)
            where = f"'{node.path}' ({node.record.name})" if node.path else f"canonical {node.record.name}"
            raise PolicyError(file, f"unknown field {name!r} in {where}; fields: {known}", kind, path)
        leaf = canon.leaf
        if brackets and not leaf.array:
            raise PolicyError(file, f"{name!r} is not a list; remove the []", kind, path)
        last = i == len(segments) - 1
        if (node.record.name, name) in TRANSFORM_OWNED:
            raise PolicyError(
                file, "set by the transform (the national schema's major), not by a policy", kind, path
            )
        if not last:
            if leaf.array and not brackets:
                raise PolicyError(
                    file, f"{name!r} is a list: write {name}[] to name a field of its items", kind, path
                )
            if canon.record is None:
                raise PolicyError(file, f"{name!r} has no fields to name", kind, path)
            if canon.record.name in OPAQUE_RECORDS:
                raise PolicyError(
                    file,
                    f"the parts of {name!r} ({canon.record.name}) are identifiers and never sent; "
                    f"pseudonymize {'.'.join(segments[: i + 1])} as a whole or leave it out",
                    kind,
                    path,
                )
            child = node.children.get(name)
            if child is None:
                child = OutChild(canon, here, sub=OutNode(canon.record, here), out_name=name)
                node.children[name] = child
            elif child.sub is None or child.kept_whole:
                raise PolicyError(file, f"overlaps '{child.path}', which already has a method", kind, path)
            assert child.sub is not None
            node = child.sub
            continue
        if name in node.children:
            raise PolicyError(file, f"overlaps '{node.children[name].path}', named already", kind, path)
        _check_protected(file, kind, path, node.record.name, canon, spec)
        if spec.method == "keep" and canon.record is not None:
            if canon.record.name in OPAQUE_RECORDS:
                raise PolicyError(
                    file,
                    f"{name!r} ({canon.record.name}) is identifying; pseudonymize it or leave it out",
                    kind,
                    path,
                )
            sub = OutNode(canon.record, here)
            _expand_keep(file, kind, sub)
            node.children[name] = OutChild(canon, here, sub=sub, out_name=name, kept_whole=True)
            return
        try:
            check_applicable(spec, leaf)
        except MethodError as exc:
            raise PolicyError(file, str(exc), kind, path) from None
        out_name = str(spec.params.get("as") or name)
        if out_name != name and out_name in node.record.fields:
            raise PolicyError(
                file, f"'as: {out_name}' would hide the canonical field of that name", kind, path
            )
        node.children[name] = OutChild(canon, here, spec=spec, out_name=out_name)


def _check_protected(
    file: str, kind: str, path: str, record: str, canon: CanonField, spec: MethodSpec
) -> None:
    pair = (record, canon.name)
    if spec.method == "drop":
        return
    if pair in FREE_TEXT:
        raise PolicyError(
            file, "free text may hold anything, names included; it is always dropped", kind, path
        )
    if pair in DROP_ONLY or (record, "*") in DROP_ONLY:
        raise PolicyError(file, "a direct identifier; it can only be dropped", kind, path)
    if spec.method == "keep" and pair in NEVER_KEPT:
        raise PolicyError(
            file,
            "identifying as it is; pseudonymize, generalize or date_shift it, or leave it out",
            kind,
            path,
        )


def _expand_keep(file: str, kind: str, node: OutNode) -> None:
    """``keep`` of a record: each field kept, free text skipped, identifiers refused (name fields instead)."""
    keep = MethodSpec("keep")
    for name, canon in node.record.fields.items():
        pair = (node.record.name, name)
        here = f"{node.path}.{name}"
        if pair in FREE_TEXT:
            continue
        if (
            pair in DROP_ONLY
            or (node.record.name, "*") in DROP_ONLY
            or pair in NEVER_KEPT
            or (canon.record is not None and canon.record.name in OPAQUE_RECORDS)
        ):
            raise PolicyError(
                file,
                f"keeping '{node.path}' whole would send '{here}', which is identifying; "
                "name the fields to keep",
                kind,
                node.path,
            )
        if canon.record is not None:
            sub = OutNode(canon.record, here)
            _expand_keep(file, kind, sub)
            node.children[name] = OutChild(canon, here, sub=sub, out_name=name)
        else:
            node.children[name] = OutChild(canon, here, spec=keep, out_name=name)


def _sent(node: OutNode) -> list[OutChild]:
    return [c for c in node.children.values() if c.sub is not None or (c.spec and c.spec.method != "drop")]


def _check_not_empty(file: str, kind: str, node: OutNode) -> None:
    for child in node.children.values():
        if child.sub is not None:
            if not _sent(child.sub):
                raise PolicyError(
                    file, "every field below is dropped; drop the record itself", kind, child.path
                )
            _check_not_empty(file, kind, child.sub)


def _uses_date_shift(node: OutNode) -> bool:
    return any(
        (c.spec is not None and c.spec.method == "date_shift")
        or (c.sub is not None and _uses_date_shift(c.sub))
        for c in node.children.values()
    )


def _check_required(file: str, kind: str, root: OutNode) -> None:
    """Without these a national record cannot be deduplicated, typed or attributed to a pseudonym."""
    envelope = root.children.get("envelope")
    env_children = envelope.sub.children if envelope is not None and envelope.sub is not None else {}
    event_id = env_children.get("event_id")
    if event_id is None or event_id.spec is None or event_id.spec.context != CONTEXT_EVENT:
        raise PolicyError(
            file,
            "required: 'envelope.event_id: {method: pseudonymize, context: event}'",
            kind,
            "envelope.event_id",
        )
    event_type = env_children.get("event_type")
    if event_type is None or event_type.spec is None or event_type.spec.method != "keep":
        raise PolicyError(file, "required: 'envelope.event_type: keep'", kind, "envelope.event_type")
    patient = root.children.get("patient")
    if patient is None or patient.spec is None or patient.spec.context != CONTEXT_PATIENT:
        raise PolicyError(
            file,
            "required: 'patient: {method: pseudonymize, context: patient}' (the national key)",
            kind,
            "patient",
        )


# ------------------------------------------------------------------ compiling


def _compile(node: OutNode, zone: ZoneInfo) -> Callable[[Mapping[str, Any], RecordContext], dict[str, Any]]:
    """One closure per record: kept fields copied by a comprehension, others through their operation.

    This is the reference form, also used to locate a failing field; :func:`_generate` turns the same
    operations into one flat function for the hot path, and a test holds both to the same output.
    """
    keeps: list[str] = []
    ops: list[tuple[str, Op, OutChild]] = []
    for name, child in node.children.items():
        if child.sub is not None:
            ops.append((name, _record_op(child, _compile(child.sub, zone)), child))
        elif child.spec is None or child.spec.method == "drop":
            continue
        elif child.spec.method == "keep":
            keeps.append(name)
        else:
            ops.append((child.out_name, build_op(child.spec, child.field.leaf, zone), child))
    if node.record.name == "Envelope":
        ops.append(
            (
                "schema_version",
                _constant(NATIONAL_MAJOR),
                OutChild(node.record.fields["schema_version"], "envelope.schema_version"),
            )
        )
    node.keeps = tuple(keeps)
    node.ops = tuple(ops)
    keep_names = node.keeps
    op_list = tuple((out, op) for out, op, _ in ops)

    def build(value: Mapping[str, Any], ctx: RecordContext) -> dict[str, Any]:
        out = {name: value.get(name) for name in keep_names}
        for out_name, op in op_list:
            out[out_name] = op(value, ctx)
        return out

    return build


def _generate(root: OutNode, kind: str) -> Callable[[Mapping[str, Any], RecordContext], dict[str, Any]]:
    """The compiled tree as one Python function: a single dict display with nested records inlined.

    Per record this saves a call and a loop for every nested record (an observation has about ten),
    which is most of the transform's own cost. Only field names checked against the canonical schema
    (``[a-z_][a-z0-9_]*``) and generated variable names reach the source; operations are passed in
    the namespace, never as text.
    """
    namespace: dict[str, Any] = {}
    counter = iter(range(1, 1_000_000))  # v0 is the canonical record

    def expr(node: OutNode, var: str) -> str:
        parts = [f"{name!r}: {var}.get({name!r})" for name in node.keeps]
        for out_name, op, child in node.ops:
            if child.sub is not None:
                inner = f"v{next(counter)}"
                sub = expr(child.sub, inner)
                source = f"{var}.get({child.field.name!r})"
                if child.field.leaf.array:
                    text = f"[{sub} for {inner} in ({source} or ())]"
                else:
                    text = f"(None if ({inner} := {source}) is None else {sub})"
            else:
                name = f"_op{next(counter)}"
                namespace[name] = op
                text = f"{name}({var}, ctx)"
            parts.append(f"{out_name!r}: {text}")
        return "{" + ", ".join(parts) + "}"

    body = expr(root, "v0")
    source = f"def build_{kind}(v0, ctx):\n    return {body}\n"
    exec(compile(source, f"<national {kind} policy>", "exec"), namespace)
    built: Callable[[Mapping[str, Any], RecordContext], dict[str, Any]] = namespace[f"build_{kind}"]
    return built


def _constant(value: Any) -> Op:
    def constant(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
        return value

    return constant


def _record_op(child: OutChild, build: Callable[[Mapping[str, Any], RecordContext], dict[str, Any]]) -> Op:
    name = child.field.name
    if child.field.leaf.array:

        def items(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
            return [build(item, ctx) for item in parent.get(name) or ()]

        return items

    def record(parent: Mapping[str, Any], ctx: RecordContext) -> Any:
        value = parent.get(name)
        return None if value is None else build(value, ctx)

    return record


def locate_failure(node: OutNode, value: Mapping[str, Any], ctx: RecordContext) -> str:
    """The path of the first field whose operation fails on ``value`` — the slow path, run only after a
    failure, so the fast path needs no bookkeeping."""
    if not isinstance(value, Mapping):
        return node.path or "<record>"
    for _, op, child in node.ops:
        try:
            op(value, ctx)
        except Exception:
            if child.sub is None:
                return child.path
            inner = value.get(child.field.name)
            for item in (inner if child.field.leaf.array else [inner]) or ():
                if item is not None:
                    deeper = locate_failure(child.sub, item, ctx)
                    if deeper:
                        return deeper
            return child.path
    return node.path


# ------------------------------------------------------------------ the national schema this policy implies

_PATIENT_PSEUDONYM = {
    "type": "record",
    "name": "PatientPseudonym",
    "doc": "Who the event is about, as the destination may know them: a keyed pseudonym, never an "
    "identifier.",
    "fields": [
        {
            "name": "pseudonym",
            "type": "string",
            "doc": "'<key_id>:<base32 HMAC-SHA-256>' of 'INS|<matricule>' for a qualified INS, else of "
            "'IPP|<authority>|<IPP>'; the Kafka key of the topic.",
        },
        {
            "name": "linkable",
            "type": "boolean",
            "doc": "True when derived from a qualified INS: the same person has the same pseudonym whatever "
            "the hospital. False: a local pseudonym, valid within one hospital's identity domain only.",
        },
        {
            "name": "key_id",
            "type": "string",
            "doc": "Id of the key that made the pseudonym (also its prefix); changes when keys rotate.",
        },
    ],
}


# Docs the canonical schema cannot give, because the national field means something else.
_NATIONAL_DOCS: dict[tuple[str, str], str] = {
    ("Envelope", ""): "What every national event carries: an id to deduplicate on, its type, where it came "
    "from and when, as far as the destination's policy sends them.",
    ("*", "envelope"): "Event identity, type, source and times.",
    ("Envelope", "event_id"): "Deterministic id of the event for this destination: lowercase hex "
    "HMAC-SHA-256 of the hospital's event id under the destination key. Replays and duplicates carry the "
    "same id; deduplicate on it. Other events refer to it (result_event_ids, target_event_ids).",
    ("Source", ""): "The sending organisation and the door it came through.",
    ("*", "patient"): "Who the event is about, as a keyed pseudonym (never an identifier).",
    ("Retraction", "patient"): "The patient concerned, as a keyed pseudonym: for MERGE the surviving "
    "identity, for OPPOSITION the objecting patient, otherwise the patient of the target events.",
    ("Retraction", "retired_patient"): "For MERGE: the pseudonym of the identity that disappears; its "
    "events now belong to patient. Null for other kinds.",
    ("*", "encounter"): "Pseudonym of the visit this event belongs to (HMAC of the assigning authority and "
    "the visit number): events of one stay share it.",
    ("Retraction", "target_event_ids"): "event_id (national form) of each event withdrawn, when known.",
    ("Retraction", "target_source_reference"): "Pseudonym of the source-side reference of what is "
    "withdrawn when its event ids are not known (same pseudonym for the same reference).",
    ("DiagnosticReport", "result_event_ids"): "event_id (national form) of each Observation of this "
    "report, in order.",
    ("Movement", "movement_id"): "Pseudonym of the IHE PAM movement id: what an UPDATE or CANCEL of the "
    "same movement carries too.",
    ("Device", "id"): "Pseudonym of the device identifier: readings of one device share it.",
}


_GENERALIZED_NOUNS = {
    "birth_date": "Birth date",
    "death_date": "Date of death",
    "birth_place_code": "Place of birth (INSEE commune code at the source)",
    "postal_code": "Postal code of the address",
}


def _national_doc(record: str, name: str, fallback: str) -> str:
    return _NATIONAL_DOCS.get((record, name)) or _NATIONAL_DOCS.get(("*", name)) or fallback


class _SchemaWriter:
    def __init__(self, named: dict[str, Any]) -> None:
        self.canon_named = named
        self.defined: dict[str, str] = {}  # name → structure without docs, to reuse or rename

    def named_type(self, definition: dict[str, Any], hint: str) -> Any:
        shape = _shape(definition)
        name = definition["name"]
        if name in self.defined:
            if self.defined[name] == shape:
                return name
            name = f"{name}Of{''.join(p.capitalize() for p in hint.split('_'))}"
            definition = {**definition, "name": name}
            if name in self.defined:
                return name
        self.defined[name] = shape
        return definition

    def leaf_type(self, node: Any, hint: str) -> Any:
        if isinstance(node, list):
            return [self.leaf_type(n, hint) for n in node]
        if isinstance(node, str):
            if node in _PRIMITIVES or node == "PatientPseudonym":
                if node == "PatientPseudonym":
                    return self.named_type(_PATIENT_PSEUDONYM, hint)
                return node
            definition = self.canon_named[node.rsplit(".", 1)[-1]]
            return self.leaf_type(definition, hint)
        if node.get("type") == "enum":
            enum = {k: node[k] for k in ("type", "name", "doc", "symbols") if k in node}
            return self.named_type(enum, hint)
        if node.get("type") == "array":
            return {**node, "items": self.leaf_type(node["items"], hint)}
        return dict(node)

    def record(self, node: OutNode, doc: str | None = None) -> Any:
        fields: list[dict[str, Any]] = []
        for name, canon in node.record.fields.items():
            child = node.children.get(name)
            if node.record.name == "Envelope" and name == "schema_version":
                fields.append(
                    {
                        "name": "schema_version",
                        "type": "int",
                        "doc": "Major version of this national schema (the v<N> of the topic).",
                    }
                )
                continue
            if child is None or (child.spec is not None and child.spec.method == "drop"):
                continue
            fields.append(self.field(child, canon, node.record.name))
        definition = {
            "type": "record",
            "name": node.record.name,
            "doc": doc if doc is not None else _national_doc(node.record.name, "", node.record.doc),
            "fields": fields,
        }
        return self.named_type(definition, node.path.replace(".", "_") or node.record.name)

    def field(self, child: OutChild, canon: CanonField, parent: str) -> dict[str, Any]:
        leaf = canon.leaf
        hint = child.path.rsplit(".", 1)[-1]
        if child.sub is not None:
            record = self.record(child.sub)
            avro: Any = {"type": "array", "items": record} if leaf.array else record
            if leaf.nullable:
                avro = ["null", avro]
            out = {"name": canon.name, "type": avro}
            if canon.has_default:
                out["default"] = canon.default
            out["doc"] = _national_doc(parent, canon.name, canon.doc)
            return out
        assert child.spec is not None
        spec = child.spec
        avro = self.leaf_type(output_type(spec, leaf, canon.type_json), hint)
        if spec.method == "generalize":
            noun = _GENERALIZED_NOUNS.get(canon.name) or canon.doc.split(". ")[0].rstrip(".")
            doc = f"{noun}, generalized: {describe(spec)}."
        else:
            doc = canon.doc if spec.method == "keep" else f"{canon.doc} Sent as: {describe(spec)}."
        out = {"name": child.out_name, "type": avro}
        if isinstance(avro, list) and avro and avro[0] == "null":
            out["default"] = None
        elif spec.method in ("keep", "date_shift") and canon.has_default:
            out["default"] = canon.default
        elif leaf.array and canon.has_default:
            out["default"] = []
        out["doc"] = _national_doc(parent, canon.name, doc) if spec.method == "pseudonymize" else doc
        return out


def schema_shape(definition: Any) -> str:
    """A schema without its docs, as canonical JSON: what two schemas must share to be the same."""
    return _shape(definition)


def _shape(definition: Any) -> str:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "doc"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(definition), sort_keys=True)


def derive_schema(policy: Policy, kind: str) -> dict[str, Any]:
    """The national Avro schema that holds exactly what the policy emits for ``kind``.

    Types mirror the canonical ones for kept and shifted fields; pseudonyms and generalizations are
    strings (generalizations nullable: a foreign postal code has no département); the patient block is
    ``PatientPseudonym``. Docs come from the canonical schema plus what the method does; the shipped
    ``.avsc`` files may word docs better, but a test holds their structure equal to this.
    """
    plan = policy.plans[kind]
    _, named = canonical_tree(kind)
    writer = _SchemaWriter(named)
    schema = writer.record(
        plan.root,
        f"{plan.root.record.name} events sent to {policy.destination} under policy version {policy.version} "
        f"(topic {plan.topic}). Only what the policy names is here; nothing directly identifying.",
    )
    assert isinstance(schema, dict)
    return {
        "type": "record",
        "name": schema["name"],
        "namespace": f"{NATIONAL_NAMESPACE}.{policy.destination}",
        "doc": schema["doc"],
        "fields": schema["fields"],
    }


def describe_policy(policy: Policy, kind: str) -> list[tuple[str, str]]:
    """(path, what the platform receives) for every field named for ``kind``, for documentation."""
    rows: list[tuple[str, str]] = []

    def walk(node: OutNode) -> None:
        for child in node.children.values():
            if child.sub is not None:
                walk(child.sub)
            elif child.spec is not None:
                shown = (
                    child.path if child.out_name == child.field.name else f"{child.path} → {child.out_name}"
                )
                rows.append((shown, describe(child.spec)))

    walk(policy.plans[kind].root)
    return rows
