"""FHIR R4 JSON (a resource or a Bundle) → canonical events: the pure mapping behind ``ingest.fhir.raw``.

Why the code looks the way it does (the decisions themselves are listed in docs/mapping-fhir.md):

* Validation by fhir.resources' **R4B** models. fhir.resources 8 ships R5 (default), R4B and STU3; R5
  rejects ordinary R4 content (``Encounter.class`` became a list, ``Procedure.performed[x]`` became
  ``occurrence[x]``, ``Condition.clinicalStatus`` became required) while R4B (4.3.0) kept R4's shape for
  every resource mapped here. The models do not check required bindings, so the codes that land in
  closed canonical fields (statuses, gender) are checked by ``formats/fhir/admission.py`` — with every
  other rule that refuses a validated resource, so the FHIR door refuses what this mapper would.
* Mapping from the plain JSON dict, not the model objects: validation already costs most of the time
  budget (130–350 µs per resource here), walking pydantic objects would double it. Because pydantic validates
  in lax mode (``"true"`` passes as a boolean, ``"5.2"`` as a decimal), every read coerces or ignores,
  never trusts a Python type.
* Event ids belong to the *resource version*, not to the HTTP message that carried it: the poller and
  the Subscription receiver see the same version in different Bundles, and a DELETE arrives in a later
  message. So for a resource with a logical id the message-id slot of :func:`envelope.event_id` holds
  ``<Type>/<id>`` and the index holds ``_history/<versionId>``; without a versionId it holds
  ``content/<digest>`` (a correction sent without a version must not collapse into the original);
  a resource known only by a ``urn:uuid`` fullUrl uses that URN in place of ``<Type>/<id>``; one with
  neither falls back to the carrying message (``entry[<n>]``).
* No input value ever reaches an exception: reasons name FHIR paths and rules, pydantic's messages
  (which embed the offending input) are reduced to location and error type.
"""

from __future__ import annotations

from streams.normalize.fhir.entry import resource_event_id
from streams.normalize.fhir.payload import map_fhir

__all__ = ["map_fhir", "resource_event_id"]
