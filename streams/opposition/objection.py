"""An objection to research use, as the pure data the opposition service writes (design §6).

Two things follow from one objection, and both are computed here without Kafka:

- the registry entries: keyed hashes of every identity form the patient may be known by (INS, IPP +
  authority) — the only form in which ``control.opposition`` ever holds the objection;
- the canonical OPPOSITION retractions, one per form the patient may have been *published* under: a
  patient whose identity was qualified got an INS pseudonym, before that an IPP pseudonym, so both
  must be withdrawn. They are never written to a canonical topic (that would keep the identity of
  people who objected in clear in Kafka): the service passes them straight through the destinations'
  policies, and only their pseudonymized national form is produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from affluent.core.errors import ConfigError
from formats.clinical.identity import INS_NIR_OID, patient_ref_of, valid_matricule
from streams.normalize.envelope import SCHEMA_VERSION, event_id_of
from streams.pseudonymize.keys import Key, KeyProvider, PinnedKey
from streams.pseudonymize.opposition import opposition_key
from streams.pseudonymize.pseudonym import ins_form, ipp_form
from streams.pseudonymize.transform import Feed, apply

PROTOCOL = "control"
APPLICATION = "opposition"
REASON_CODE = "patient-objection"
# What the INS block says when the objection gives a bare matricule: the kind only matters to
# policies that keep it, and no shipped policy keeps anything of the INS but its pseudonym.


class InvalidObjection(ConfigError):
    """An objection that names nobody usable; the text names the field, never its value."""


@dataclass(frozen=True, slots=True)
class Objection:
    """Who objects: an INS matricule and/or an IPP with its assigning authority (OID or namespace)."""

    ins: str | None = None
    ipp: str | None = None
    authority: str | None = None

    def __post_init__(self) -> None:
        if self.ins is not None and not valid_matricule(self.ins):
            raise InvalidObjection("ins must be a 15-character INS matricule with a valid key")
        if self.ipp and not self.authority:
            raise InvalidObjection("an IPP objection needs the IPP's assigning authority (OID or namespace)")
        if self.authority and not self.ipp:
            raise InvalidObjection("authority is given without an ipp")
        if not self.ins and not self.ipp:
            raise InvalidObjection("an objection needs an INS matricule or an IPP with its authority")

    def __repr__(self) -> str:  # personal data: never printed
        return f"Objection(ins={'yes' if self.ins else 'no'}, ipp={'yes' if self.ipp else 'no'})"

    __str__ = __repr__

    @classmethod
    def from_json(cls, body: Any) -> Objection:
        """From ``{"ins": …}`` and/or ``{"ipp": …, "authority": …}``; anything else is refused."""
        if not isinstance(body, dict):
            raise InvalidObjection("the body must be a JSON object")
        unknown = sorted(set(body) - {"ins", "ipp", "authority"})
        if unknown:
            raise InvalidObjection(f"unknown field(s): {', '.join(unknown)[:200]}")
        values: dict[str, str | None] = {}
        for name in ("ins", "ipp", "authority"):
            value = body.get(name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidObjection(f"{name} must be a non-empty string")
            values[name] = value.strip() if isinstance(value, str) else None
        return cls(**values)

    def patient_refs(self) -> list[dict[str, Any]]:
        """One canonical PatientRef per identity the patient may have been published under."""
        refs: list[dict[str, Any]] = []
        authority = self.authority or ""
        if self.ins:
            ins = {"matricule": self.ins, "oid": INS_NIR_OID, "kind": "NIR"}
            refs.append(patient_ref_of(self.ipp or "", authority, ins, ins_qualified=True))
        if self.ipp:
            refs.append(patient_ref_of(self.ipp, authority))
        return refs

    def forms(self) -> list[str]:
        """The identity strings the registry entries are keyed hashes of."""
        forms: list[str] = []
        for ref in self.patient_refs():
            form = ins_form(ref) if ref["ins_qualified"] else ipp_form(ref)
            if form is not None:
                forms.append(form)
        return forms


def registry_entries(keys: KeyProvider, objection: Objection, key: Key | None = None) -> list[str]:
    """The ``control.opposition`` keys for this objection, under ``key`` (default: the current
    opposition key)."""
    return [opposition_key(keys, form, key) for form in objection.forms()]


def retraction_records(
    objection: Objection,
    registered_at: datetime,
    registered_by: str,
    entries: list[str],
    lineage: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    """The canonical OPPOSITION retractions (one per identity form), in the canonical Retraction shape.

    ``entries`` and ``lineage`` are the registry keys written and their (partition, offset): the
    retraction's lineage points at the registry record it was born of, and its event id is derived
    from that entry and the registration time — a replay of the same registration gives the same
    id, a later objection by the same patient (after a withdrawal) a new one.
    """
    out: list[dict[str, Any]] = []
    for ref, entry, (partition, offset) in zip(objection.patient_refs(), entries, lineage, strict=True):
        message_id = f"{entry}@{registered_at.isoformat()}"
        out.append(
            {
                "envelope": {
                    "event_id": event_id_of(
                        PROTOCOL, registered_by, APPLICATION, message_id, "retraction.issued@objection"
                    ),
                    "event_type": "retraction.issued",
                    "source": {
                        "facility": registered_by,
                        "application": APPLICATION,
                        "connector": APPLICATION,
                        "protocol": PROTOCOL,
                    },
                    "event_time": registered_at,
                    "event_time_precision": "microsecond",
                    "ingest_time": registered_at,
                    "schema_version": SCHEMA_VERSION,
                    "lineage": {
                        "topic": "control.opposition",
                        "partition": partition,
                        "offset": offset,
                        "raw_id": entry,
                    },
                },
                "patient": ref,
                "kind": "OPPOSITION",
                "target_event_ids": [],
                "target_source_reference": None,
                "retired_patient": None,
                "reason_code": REASON_CODE,
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class NationalRetraction:
    topic: str
    key: bytes  # the patient's pseudonym under the key it was made with
    value: bytes  # Confluent wire format: header + Avro body
    destination: str
    key_id: str


def national_retractions(
    feeds: Sequence[Feed], keys: KeyProvider, headers: Mapping[str, bytes], records: list[dict[str, Any]]
) -> list[NationalRetraction]:
    """Each retraction in every destination's national form, under every key the destination still
    keeps: records published before a key rotation carry the old key's pseudonym, and the platform can
    only delete them if the retraction names that pseudonym. A policy that cannot express a retraction
    is a configuration error (TransformError), not something to skip silently."""
    out: list[NationalRetraction] = []
    for feed in feeds:
        if not feed.sends("retraction"):
            continue
        ring = feed.policy.key_name
        for key in keys.all(ring):
            pinned = PinnedKey(keys, ring, key)
            for record in records:
                national = apply(feed.policy, pinned, "retraction", record)
                if national is None:
                    continue
                value = headers[national.topic] + feed.encode(national)
                out.append(
                    NationalRetraction(
                        national.topic, national.key.encode("utf-8"), value, feed.destination, key.key_id
                    )
                )
    return out
