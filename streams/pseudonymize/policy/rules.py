"""What every policy is held to, whatever its destination: the fields it may never send or keep, the
national naming of topics and schemas, and :class:`PolicyError`.

Its own module because loading (which refuses a policy breaking these rules), compiling and the schema
writer all depend on it, and a data-protection reviewer should find the protected fields in one place.
"""

from __future__ import annotations

from affluent.core.errors import ConfigError

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


class PolicyError(ConfigError):
    """A policy that cannot be used. Names file, kind, path and problem — policies hold no patient data,
    and neither does this text."""

    def __init__(self, file: str, problem: str, kind: str = "", path: str = "") -> None:
        self.file, self.kind, self.path, self.problem = file, kind, path, problem
        where = ": ".join(part for part in (f"policy {file}", kind, path) if part)
        super().__init__(f"{where}: {problem}")


def national_topic(destination: str, kind: str) -> str:
    return f"national.{destination}.{kind}.v{NATIONAL_MAJOR}"


def national_schema_name(destination: str, kind: str) -> str:
    return f"national/{destination}/{kind}_v{NATIONAL_MAJOR}"
