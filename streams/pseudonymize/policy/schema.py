"""The national Avro schema a policy implies: exactly the fields it sends, typed as its methods emit them.

Apart from loading and compiling because it is documentation as much as code — the shipped national
``.avsc`` files are held structurally equal to what this writes, with docs that say what each method did.
"""

from __future__ import annotations

import json
from typing import Any

from streams.pseudonymize.methods import describe, output_type
from streams.pseudonymize.policy.rules import NATIONAL_NAMESPACE
from streams.pseudonymize.policy.tree import (
    _PRIMITIVES,
    CanonField,
    KindPlan,
    OutChild,
    OutNode,
    canonical_tree,
)

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


def national_schema(plan: KindPlan, destination: str, version: int) -> dict[str, Any]:
    """The national Avro schema that holds exactly what a policy's ``plan`` emits (see :func:`derive_schema`).

    Types mirror the canonical ones for kept and shifted fields; pseudonyms and generalizations are
    strings (generalizations nullable: a foreign postal code has no département); the patient block is
    ``PatientPseudonym``. Docs come from the canonical schema plus what the method does; the shipped
    ``.avsc`` files may word docs better, but a test holds their structure equal to this.
    """
    _, named = canonical_tree(plan.kind)
    writer = _SchemaWriter(named)
    schema = writer.record(
        plan.root,
        f"{plan.root.record.name} events sent to {destination} under policy version {version} "
        f"(topic {plan.topic}). Only what the policy names is here; nothing directly identifying.",
    )
    assert isinstance(schema, dict)
    return {
        "type": "record",
        "name": schema["name"],
        "namespace": f"{NATIONAL_NAMESPACE}.{destination}",
        "doc": schema["doc"],
        "fields": schema["fields"],
    }
