"""FHIR rules every FHIR door shares (REST receiver, puller): media types, version ids, OperationOutcome.

Kept apart from both doors so that the receiver and the puller name a resource version, accept a body
and word a refusal the same way. Nothing here echoes input values: an OperationOutcome's diagnostics
are written from paths and rules only, because they travel back to senders and into logs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

FHIR_JSON: Final = "application/fhir+json"
# application/json+fhir is the DSTU2 spelling some R4 clients still send.
ACCEPTED_MEDIA_TYPES: Final = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
RESPONSE_CONTENT_TYPE: Final = f"{FHIR_JSON}; charset=utf-8"


def media_type_accepted(media_type: str, charset: str | None) -> bool:
    """FHIR JSON is UTF-8 (R4 §2.6.2): another declared charset is a client mistake, not a guess to make."""
    if media_type.lower() not in ACCEPTED_MEDIA_TYPES:
        return False
    return charset is None or charset.lower().replace("_", "-") in ("utf-8", "utf8")


def version_id(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    vid = meta.get("versionId") if isinstance(meta, dict) else None
    return vid if isinstance(vid, str) and vid.strip() else None


def version_message_id(rtype: str, rid: str | None, vid: str | None) -> str | None:
    """``<type>/<id>/_history/<versionId>``: the one name of a resource version, whichever door saw it."""
    if not rid or not vid:
        return None
    return f"{rtype}/{rid}/_history/{vid}"


def resource_message_id(resource: Mapping[str, Any]) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        return None
    return version_message_id(rtype, rid, version_id(resource))


def content_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue; ``code`` from the FHIR issue-type value set (invalid, not-found, ...)."""

    code: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"

    def as_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}
