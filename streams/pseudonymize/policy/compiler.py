"""A checked output tree compiled into code: reference closures, and one generated function per kind.

Apart from loading so that the hot path (what runs per record) can be read, profiled and tested on its
own: a test holds the generated function and the reference closures to the same output, and
:func:`locate_failure` uses the operations kept on the tree to name the failing field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from streams.pseudonymize.methods import Op, RecordContext, build_op
from streams.pseudonymize.policy.rules import NATIONAL_MAJOR
from streams.pseudonymize.policy.tree import OutChild, OutNode


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
