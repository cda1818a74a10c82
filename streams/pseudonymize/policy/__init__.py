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

from streams.pseudonymize.policy.compiler import locate_failure
from streams.pseudonymize.policy.load import load_policy, parse_policy, shipped_policy_path
from streams.pseudonymize.policy.model import Policy, derive_schema, describe_policy
from streams.pseudonymize.policy.rules import (
    DEFAULT_TIMEZONE,
    DROP_ONLY,
    FREE_TEXT,
    NATIONAL_MAJOR,
    NATIONAL_NAMESPACE,
    NEVER_KEPT,
    OPAQUE_RECORDS,
    TRANSFORM_OWNED,
    PolicyError,
    national_schema_name,
    national_topic,
)
from streams.pseudonymize.policy.schema import national_schema, schema_shape
from streams.pseudonymize.policy.tree import (
    CanonField,
    CanonRecord,
    KindPlan,
    OutChild,
    OutNode,
    canonical_tree,
)

__all__ = [
    "DEFAULT_TIMEZONE",
    "DROP_ONLY",
    "FREE_TEXT",
    "NATIONAL_MAJOR",
    "NATIONAL_NAMESPACE",
    "NEVER_KEPT",
    "OPAQUE_RECORDS",
    "TRANSFORM_OWNED",
    "CanonField",
    "CanonRecord",
    "KindPlan",
    "OutChild",
    "OutNode",
    "Policy",
    "PolicyError",
    "canonical_tree",
    "derive_schema",
    "describe_policy",
    "load_policy",
    "locate_failure",
    "national_schema",
    "national_schema_name",
    "national_topic",
    "parse_policy",
    "schema_shape",
    "shipped_policy_path",
]
