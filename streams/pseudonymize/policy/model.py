"""A loaded policy (:class:`Policy`): what a destination receives, kind by kind, and how to describe it.

Apart from loading because a Policy is what the transform, the CLI and the docs consume, whatever file
it came from; downstream of the schema writer so that :meth:`Policy.schema` needs no import back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from streams.pseudonymize.methods import describe
from streams.pseudonymize.policy.rules import national_schema_name, national_topic
from streams.pseudonymize.policy.schema import national_schema
from streams.pseudonymize.policy.tree import KindPlan, OutNode


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


def derive_schema(policy: Policy, kind: str) -> dict[str, Any]:
    """The national Avro schema that holds exactly what the policy emits for ``kind``.

    Written by :func:`national_schema` from the kind's plan; kept here, with :class:`Policy`, so that
    :meth:`Policy.schema` reaches it without the schema writer importing back.
    """
    return national_schema(policy.plans[kind], policy.destination, policy.version)


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
