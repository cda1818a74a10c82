"""One resource of a payload and the event id it gets: ids belong to the resource version, not the message.

Separate from the document so that deletes and any later consumer can name the events of
``<Type>/<id>`` at a version (:func:`resource_event_id`) without building a document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from formats.clinical.codes import Record
from formats.clinical.times import ClinicalTime
from streams.normalize.envelope import RawContext, envelope, event_id_of


@dataclass(slots=True, eq=False)
class _Entry:
    resource: Record
    rtype: str
    position: int | None  # index in Bundle.entry; None for a lone resource or a contained one
    full_url: str | None = None
    etag_version: str | None = None  # Bundle.entry.response.etag, for history Bundles
    holder: _Entry | None = None  # the resource that contains this one ('#id' references)


def _version_index(version: str | None, resource: Record) -> str:
    if version:
        return f"_history/{version}"
    body = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "content/" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _scoped_event_id(ctx: RawContext, source: str, index: str) -> str:
    """``envelope.event_id`` with ``source`` in the message-id slot (no RawContext copy on the hot path)."""
    return event_id_of(ctx.protocol, ctx.facility, ctx.application, source, index)


def _scoped_envelope(
    ctx: RawContext, source: str, index: str, event_type: str, when: ClinicalTime | None
) -> Record:
    env = envelope(ctx, index, event_type, when)
    env["event_id"] = _scoped_event_id(ctx, source, index)
    return env


def resource_event_id(ctx: RawContext, rtype: str, rid: str, version: str) -> str:
    """The event id a versioned resource gets, whatever message carries it (see the package docstring).

    Public because a retraction, a DiagnosticReport and any later consumer must be able to name the
    events of ``<Type>/<id>`` at a version without seeing them again.
    """
    return _scoped_event_id(ctx, f"{rtype}/{rid}", f"_history/{version}")
