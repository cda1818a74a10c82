"""Reading a policy file and checking it at load: every way a policy can be wrong is refused here.

Unknown fields and kinds, unknown methods and missing parameters, methods that do not fit a field,
identifiers kept, free text sent, no key configured: each is a :class:`PolicyError` naming file, kind,
path and problem. Only a policy that passed is compiled into a :class:`Policy`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from streams.normalize.result import CANONICAL_KINDS
from streams.pseudonymize.methods import MethodError, MethodSpec, check_applicable, parse_method
from streams.pseudonymize.policy.compiler import _compile, _generate
from streams.pseudonymize.policy.model import Policy
from streams.pseudonymize.policy.rules import (
    DEFAULT_TIMEZONE,
    DROP_ONLY,
    FREE_TEXT,
    NEVER_KEPT,
    OPAQUE_RECORDS,
    TRANSFORM_OWNED,
    PolicyError,
    national_schema_name,
    national_topic,
)
from streams.pseudonymize.policy.tree import CanonField, KindPlan, OutChild, OutNode, canonical_tree
from streams.pseudonymize.pseudonym import CONTEXT_EVENT, CONTEXT_PATIENT

_PATH_SEGMENT = re.compile(r"([a-z_][a-z0-9_]*)(\[\])?")
_DESTINATION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TOP_KEYS = frozenset(
    {"destination", "version", "description", "key", "timezone", "date_shift", "common", "types", "select"}
)
_SHIPPED = ("hdh", "inca")


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
