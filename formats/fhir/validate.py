"""FHIR R4 JSON, read strictly and checked against the R4 rules, the same way at the door and in normalize.

The FHIR door refuses (4xx with an OperationOutcome) exactly what the normalize stage would dead-letter
for its form, so the check is one function shared by both, here in the pure formats layer:

* JSON per RFC 8259: UTF-8, no NaN or Infinity, numbers a double can hold;
* validation by fhir.resources' **R4B** models (fhir.resources 8 ships R5 by default, which rejects
  ordinary R4 content; R4B kept R4's shape for every resource mapped here);
* no input value ever reaches an exception: pydantic's messages (which embed the offending input) are
  reduced to location and error type.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from formats.reasons import ReasonCode, Refused

Record = dict[str, Any]

_SAFE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FHIR_PRIMITIVES: Final = frozenset(
    {
        "Decimal",
        "Date",
        "DateTime",
        "Instant",
        "Time",
        "Uri",
        "Url",
        "Id",
        "Code",
        "Oid",
        "Uuid",
        "Base64Binary",
    }
)
_PYDANTIC_MEANINGS: Final = {
    "missing": "required element absent",
    "extra_forbidden": "element not defined in FHIR R4",
    "list_type": "must be an array",
    "string_type": "must be a string",
    "string_pattern_mismatch": "string does not match its FHIR type",
    "model_type": "must be an object",
    "dict_type": "must be an object",
}


class _NotJsonNumber(ValueError):
    """NaN, Infinity or a number a double cannot hold: Python's json accepts them, JSON does not."""


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJsonNumber
    return number


def _no_json_constant(_: str) -> Any:
    raise _NotJsonNumber


_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_json_constant)


def parse_json(payload: bytes) -> Any:
    """Strict RFC 8259 JSON (no NaN/Infinity); raises Refused with a content-free reason."""
    try:
        text = bytes(payload).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused(
            ReasonCode.INVALID_JSON, "payload is not UTF-8 text", rule="FHIR JSON is UTF-8"
        ) from None
    except TypeError:
        raise Refused(ReasonCode.INVALID_JSON, "payload is not bytes", rule="FHIR JSON") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Refused(
            ReasonCode.INVALID_JSON,
            f"payload is not JSON (line {exc.lineno}, column {exc.colno})",
            rule="RFC 8259",
        ) from None
    except _NotJsonNumber:
        raise Refused(
            ReasonCode.INVALID_JSON,
            "payload holds NaN, Infinity or a number out of double range",
            rule="RFC 8259",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise Refused(
            ReasonCode.INVALID_JSON, f"payload is not usable JSON ({type(exc).__name__})", rule="RFC 8259"
        ) from None


def _validation_rule(error: Mapping[str, Any]) -> str:
    """pydantic's error type, plus a fixed explanation for fhir_core's value errors (never their text)."""
    kind = str(error.get("type", "invalid"))
    if kind != "value_error":
        return f"{kind}: {_PYDANTIC_MEANINGS[kind]}" if kind in _PYDANTIC_MEANINGS else kind
    message = str(error.get("msg", ""))
    match = re.search(r"(\w+) value string does not match spec regex", message)
    if match and match.group(1) in _FHIR_PRIMITIVES:
        return f"value_error: not a FHIR {match.group(1)}"
    for needle, meaning in (
        ("Any of one field value is expected", "more than one value of a choice element [x]"),
        ("Expect any of field value", "required choice element [x] missing"),
        ("timezone aware", "time without UTC offset"),
        ("does not parse to datetime", "not a valid instant"),
    ):
        if needle in message:
            return f"value_error: {meaning}"
    return "value_error"


def _error_path(root: str, error: Mapping[str, Any]) -> str:
    """A FHIRPath-like location from pydantic's loc; element names only, never an unknown key's text."""
    loc = list(error.get("loc", ()))
    if error.get("type") == "extra_forbidden" and loc:
        loc = loc[:-1]  # the unknown key is input text
    path = root
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif isinstance(item, str) and item != "root" and _SAFE_NAME.fullmatch(item):
            path += f".{item}"
    return path


def validate_resource(resource: Record, rtype: str, where: str = "") -> None:
    """The R4 (R4B model) check; raises Refused naming path and rule only."""
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first: Mapping[str, Any] = errors[0] if errors else {}
        location = _error_path(rtype, first)
        rule = _validation_rule(first)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Refused(
            ReasonCode.INVALID_RESOURCE,
            f"{where}{location}: {rule}{more}",
            location,
            f"FHIR R4 (R4B model): {rule}",
        ) from None
    except Exception as exc:  # fhir_core lets KeyError/TypeError through for malformed contained resources
        raise Refused(
            ReasonCode.INVALID_RESOURCE,
            f"{where}{rtype} rejected by the FHIR R4 model ({type(exc).__name__})",
            rtype,
            "FHIR R4 (R4B model)",
        ) from None


# The FHIR door's cap on a Bundle's entries (``FhirRestSettings.max_bundle_entries``), set by the door
# around each request and in its validation processes. Unset (None) elsewhere: the normalize stage maps
# whatever the door accepted, whatever the cap was then.
_ENTRY_CAP: ContextVar[int | None] = ContextVar("bundle_entry_cap", default=None)


@contextmanager
def entry_cap(limit: int | None) -> Iterator[None]:
    token = _ENTRY_CAP.set(limit)
    try:
        yield
    finally:
        _ENTRY_CAP.reset(token)


def bundle_entry_cap() -> int | None:
    return _ENTRY_CAP.get()


def check_entry_count(entries: object) -> None:
    """Before any entry is validated: validation is ~0.3 ms of CPU per entry, so a Bundle of a million
    small entries would hold a validation process for minutes."""
    limit = _ENTRY_CAP.get()
    if limit is not None and isinstance(entries, list) and len(entries) > limit:
        raise Refused(
            ReasonCode.TOO_MANY_ENTRIES,
            f"the Bundle has more than {limit} entries",
            "Bundle.entry",
            f"at most {limit} entries per Bundle",
        )


def validate_bundle_shell(bundle: Record) -> None:
    """The Bundle's own structure, without re-validating every entry's resource a second time."""
    shell = dict(bundle)
    entries = bundle.get("entry")
    check_entry_count(entries)
    if isinstance(entries, list):
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in entries
        ]
    validate_resource(shell, "Bundle", "")
