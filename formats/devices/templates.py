"""Device mapping templates: declarative, versioned YAML that says how to read one vendor's payload.

A template is the contract with an integrator, and the same compiled template runs in two places: the
HTTP/MQTT doors (to refuse at once a payload it cannot read, 400) and the normalize stage (to turn the
stored raw payload into canonical Observations). Because the door stores the raw bytes and only the
template's *name*, a fixed template can be replayed over raw data already stored.

Everything is checked at load — unknown keys, expressions, code systems, units, conversions, ranges —
so a typo fails when the template is loaded, not when the first reading arrives. Errors raised while
reading a payload (:class:`PayloadError`) name a location and a rule, never a value from the payload.
See docs/devices.md for the language.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from affluent.core.errors import AffluentError
from formats.clinical.codes import LOINC, MDC, SNOMED
from formats.clinical.times import EARLIEST, LATEST, ClinicalTime, TimeFormatError, parse_fhir_datetime
from formats.clinical.units import can_convert, to_ucum, ucum_quantity
from formats.devices import expr
from formats.devices.expr import MISSING, ExpressionError
from formats.reasons import ReasonCode

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "mappings"
# The raw record attribute naming the template a payload was read with: the door writes it, normalize
# reads the stored payload again with that template.
MAPPING_ATTRIBUTE: Final = "mapping"

CODE_SYSTEMS: Final[dict[str, str]] = {"loinc": LOINC, "mdc": MDC, "snomed": SNOMED}
TIME_FORMATS: Final = frozenset({"iso8601", "epoch_s", "epoch_ms"})
CATEGORIES: Final = frozenset({"vital-signs", "device", "survey", "activity"})

_TOP_KEYS: Final = frozenset(
    {
        "template",
        "version",
        "description",
        "readings",
        "device",
        "time",
        "patient",
        "category",
        "observations",
        "units",
    }
)
_DEVICE_KEYS: Final = frozenset({"id", "id_system", "model", "manufacturer"})
_TIME_KEYS: Final = frozenset({"path", "format", "timezone"})
_PATIENT_KEYS: Final = frozenset({"ipp", "authority"})
_OBS_KEYS: Final = frozenset(
    {"name", "code", "value", "unit", "unit_path", "convert_to", "range", "when", "optional"}
)
_CODE_KEYS: Final = frozenset({"system", "code", "display"})


class TemplateError(AffluentError):
    """A template that cannot be loaded; the message names the file and the key at fault."""


class PayloadError(ValueError):
    """A payload the template cannot read. ``code`` is a small closed set (metric label, DLQ reason);
    ``reason`` and ``location`` hold positions and rules only, never a value from the payload."""

    def __init__(self, code: ReasonCode, reason: str, location: str = "") -> None:
        super().__init__(f"{reason} ({location})" if location else reason)
        self.code, self.reason, self.location = code, reason, location


@dataclass(frozen=True, slots=True)
class CodeSpec:
    system: str
    code: str
    display: str | None


@dataclass(frozen=True, slots=True)
class ObservationSpec:
    name: str
    code: CodeSpec
    value: expr.Path
    unit: str | None  # the UCUM code, when the template fixes the unit
    unit_path: expr.Path | None  # where the payload says the unit, when it does
    convert_to: str | None
    low: float | None
    high: float | None
    when: tuple[tuple[expr.Path, Any], ...]
    optional: bool
    # The template's own unit spellings (lower case) → UCUM, tried before the shared table.
    units: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    version: int
    description: str
    readings: expr.Path | None
    device_id: expr.Path
    device_id_system: str | None
    device_model: expr.Path | None
    manufacturer: str | None
    time: expr.Path
    time_format: str
    timezone: ZoneInfo
    patient_ipp: expr.Path | None
    patient_authority: str | None
    category: str
    observations: tuple[ObservationSpec, ...]
    units: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Measurement:
    spec: ObservationSpec
    quantity: dict[str, Any]  # the canonical Quantity record


@dataclass(frozen=True, slots=True)
class Reading:
    location: str  # e.g. $.readings[2] — where in the payload this reading was
    device_id: str
    device_id_system: str | None
    model: str | None
    manufacturer: str | None
    time: ClinicalTime
    patient_ipp: str | None
    measurements: tuple[Measurement, ...]


# --- loading -------------------------------------------------------------------------------------------


def _keys(where: str, value: Any, allowed: frozenset[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TemplateError(f"{where}: expected a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise TemplateError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise TemplateError(f"{where}: missing key {key!r}")
    return value


def _path(where: str, text: Any, wildcard: bool = False) -> expr.Path:
    try:
        path = expr.parse(text)
    except ExpressionError as exc:
        raise TemplateError(f"{where}: bad expression: {exc}") from None
    if path.has_wildcard and not wildcard:
        raise TemplateError(f"{where}: [*] is only allowed in 'readings'")
    return path


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise TemplateError(f"{where}: expected a non-empty text")
    return str(value)


def _unit(where: str, text: Any) -> str:
    ucum = to_ucum(_text(where, text))
    if ucum is None:
        raise TemplateError(f"{where}: unknown unit {text!r} (use a UCUM code such as kg, mm[Hg], /min, %)")
    return ucum


def _code(where: str, raw: Any) -> CodeSpec:
    spec = _keys(where, raw, _CODE_KEYS, ("system", "code"))
    system = _text(f"{where}.system", spec["system"])
    uri = CODE_SYSTEMS.get(system.lower(), system)
    if uri == system and ":" not in system:
        raise TemplateError(f"{where}.system: unknown code system {system!r} (loinc, mdc, snomed or a URI)")
    display = spec.get("display")
    return CodeSpec(uri, _text(f"{where}.code", spec["code"]), str(display) if display else None)


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TemplateError(f"{where}: expected a number")
    return float(value)


def _units(where: str, raw: Any) -> dict[str, str]:
    """A template's own unit spellings: what a device writes → a UCUM code the hub knows.

    The shared table (``formats/clinical/units.py``) knows the usual spellings; a vendor's own
    (``kilogrammes``, ``bpm.``) is one line here, so a payload dead-lettered for ``unknown_unit`` is
    mapped after a one-line template change and a re-drive, with no code change.
    """
    if not isinstance(raw, dict) or not raw:
        raise TemplateError(f"{where}: expected a mapping of the device's unit to a UCUM code")
    units: dict[str, str] = {}
    for text, ucum in raw.items():
        spelled = _text(where, text).strip().lower()
        units[spelled] = _unit(f"{where}.{spelled}", ucum)
    return units


def _observation(where: str, raw: Any, units: dict[str, str] | None = None) -> ObservationSpec:
    spec = _keys(where, raw, _OBS_KEYS, ("name", "code", "value"))
    name = _text(f"{where}.name", spec["name"])
    unit = _unit(f"{where}.unit", spec["unit"]) if "unit" in spec else None
    unit_path = _path(f"{where}.unit_path", spec["unit_path"]) if "unit_path" in spec else None
    if unit is None and unit_path is None:
        raise TemplateError(f"{where}: needs 'unit' (fixed) or 'unit_path' (read from the payload)")
    if unit is not None and unit_path is not None:
        raise TemplateError(f"{where}: 'unit' and 'unit_path' exclude each other")
    convert_to = _unit(f"{where}.convert_to", spec["convert_to"]) if "convert_to" in spec else None
    if convert_to and unit and not can_convert(unit, convert_to):
        raise TemplateError(f"{where}.convert_to: no conversion from {unit} to {convert_to}")
    low = high = None
    if "range" in spec:
        bounds = spec["range"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise TemplateError(f"{where}.range: expected [low, high]")
        low, high = _number(f"{where}.range[0]", bounds[0]), _number(f"{where}.range[1]", bounds[1])
        if low > high:
            raise TemplateError(f"{where}.range: low is above high")
    when_raw = spec.get("when", {})
    if not isinstance(when_raw, dict):
        raise TemplateError(f"{where}.when: expected a mapping of expression to expected value")
    when = tuple((_path(f"{where}.when", k), v) for k, v in when_raw.items())
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise TemplateError(f"{where}.optional: expected true or false")
    return ObservationSpec(
        name=name,
        code=_code(f"{where}.code", spec["code"]),
        value=_path(f"{where}.value", spec["value"]),
        unit=unit,
        unit_path=unit_path,
        convert_to=convert_to,
        low=low,
        high=high,
        when=when,
        optional=optional,
        units=units or {},
    )


def compile_template(raw: Any, source: str = "template") -> Template:
    """Check a parsed YAML/JSON document and compile its expressions; TemplateError on the first fault."""
    top = _keys(source, raw, _TOP_KEYS, ("template", "version", "device", "time", "observations"))
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TemplateError(f"{source}.version: expected a positive integer")
    device = _keys(f"{source}.device", top["device"], _DEVICE_KEYS, ("id",))
    time_spec = top["time"] if isinstance(top["time"], dict) else {"path": top["time"]}
    time_spec = _keys(f"{source}.time", time_spec, _TIME_KEYS, ("path",))
    time_format = time_spec.get("format", "iso8601")
    if time_format not in TIME_FORMATS:
        raise TemplateError(f"{source}.time.format: expected one of {', '.join(sorted(TIME_FORMATS))}")
    try:
        zone = ZoneInfo(str(time_spec.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError(f"{source}.time.timezone: unknown time zone") from None
    patient = top.get("patient")
    if patient is not None:
        patient = _keys(f"{source}.patient", patient, _PATIENT_KEYS, ("ipp", "authority"))
    category = top.get("category", "vital-signs")
    if category not in CATEGORIES:
        raise TemplateError(f"{source}.category: expected one of {', '.join(sorted(CATEGORIES))}")
    obs_raw = top["observations"]
    if not isinstance(obs_raw, list) or not obs_raw:
        raise TemplateError(f"{source}.observations: expected a non-empty list")
    units = _units(f"{source}.units", top["units"]) if "units" in top else {}
    observations = tuple(_observation(f"{source}.observations[{i}]", o, units) for i, o in enumerate(obs_raw))
    names = [o.name for o in observations]
    if len(set(names)) != len(names):
        raise TemplateError(f"{source}.observations: names must be unique")
    readings = _path(f"{source}.readings", top["readings"], wildcard=True) if "readings" in top else None
    return Template(
        name=_text(f"{source}.template", top["template"]),
        version=version,
        description=str(top.get("description", "")),
        readings=readings,
        device_id=_path(f"{source}.device.id", device["id"]),
        device_id_system=str(device["id_system"]) if device.get("id_system") else None,
        device_model=_path(f"{source}.device.model", device["model"]) if "model" in device else None,
        manufacturer=str(device["manufacturer"]) if device.get("manufacturer") else None,
        time=_path(f"{source}.time.path", time_spec["path"]),
        time_format=time_format,
        timezone=zone,
        patient_ipp=_path(f"{source}.patient.ipp", patient["ipp"]) if patient else None,
        patient_authority=_text(f"{source}.patient.authority", patient["authority"]) if patient else None,
        category=category,
        observations=observations,
        units=units,
    )


def load_template(path: Path) -> Template:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML ({type(exc).__name__})") from None
    return compile_template(raw, path.name)


def load_templates(folder: Path | None = None) -> dict[str, Template]:
    """Every ``*.yaml`` of a folder (default: the shipped ones) by name; a name used twice is an error."""
    folder = folder or TEMPLATES_DIR
    templates: dict[str, Template] = {}
    for path in sorted(folder.glob("*.yaml")):
        template = load_template(path)
        if template.name in templates:
            raise TemplateError(f"{path.name}: template name {template.name!r} is defined twice")
        templates[template.name] = template
    if not templates:
        raise TemplateError(f"{folder}: no *.yaml template")
    return templates


# --- reading a payload ---------------------------------------------------------------------------------


def parse_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError(ReasonCode.NOT_JSON, "the payload is not UTF-8 JSON") from None
    except RecursionError:
        raise PayloadError(ReasonCode.NOT_JSON, "the payload nests deeper than the parser allows") from None
    except (ValueError, TypeError):  # an integer longer than Python converts; bytes that are no buffer
        raise PayloadError(ReasonCode.NOT_JSON, "the payload is not usable JSON") from None


def documents(body: Any) -> list[tuple[str, Any]]:
    """A top-level array holds several documents (one per element); anything else is one document."""
    if isinstance(body, list):
        if not body:
            raise PayloadError(ReasonCode.NO_READING, "the payload is an empty list", "$")
        return [(f"$[{i}]", item) for i, item in enumerate(body)]
    return [("$", body)]


def _time(template: Template, value: Any, location: str, seen: dict[Any, ClinicalTime]) -> ClinicalTime:
    """The reading's time; ``seen`` caches the texts already parsed in this payload (a gateway's batch
    repeats one time for every value measured together)."""
    known = seen.get(value) if isinstance(value, str | int | float) else None
    if known is not None:
        return known
    parsed = _parse_time(template, value, location)
    if isinstance(value, str | int | float):
        seen[value] = parsed
    return parsed


def _parse_time(template: Template, value: Any, location: str) -> ClinicalTime:
    if value is MISSING or value is None:
        raise PayloadError(ReasonCode.MISSING_TIMESTAMP, "the reading has no timestamp", location)
    try:
        if template.time_format == "iso8601":
            if not isinstance(value, str):
                raise PayloadError(ReasonCode.BAD_TIMESTAMP, "the timestamp is not ISO 8601 text", location)
            parsed = parse_fhir_datetime(value, template.timezone)
            if parsed is None or parsed.precision in ("year", "month", "day"):
                raise PayloadError(ReasonCode.BAD_TIMESTAMP, "the timestamp has no time of day", location)
            return parsed
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PayloadError(
                ReasonCode.BAD_TIMESTAMP, f"the timestamp is not a number ({template.time_format})", location
            )
        seconds = value / 1000 if template.time_format == "epoch_ms" else value
        instant = datetime.fromtimestamp(seconds, UTC)
        if not EARLIEST <= instant <= LATEST:
            raise PayloadError(ReasonCode.BAD_TIMESTAMP, "the timestamp is out of range", location)
        return ClinicalTime(instant, "millisecond" if template.time_format == "epoch_ms" else "second")
    except (TimeFormatError, ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(
            ReasonCode.BAD_TIMESTAMP, "the timestamp is not a valid date and time", location
        ) from None


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _matches(spec: ObservationSpec, document: Any, reading: Any) -> bool:
    return all(path.get(document, reading) == expected for path, expected in spec.when)


def _measure(spec: ObservationSpec, document: Any, reading: Any, location: str) -> Measurement | None:
    where = f"{location}:{spec.name}"
    value = spec.value.get(document, reading)
    if value is MISSING or value is None:
        if spec.optional:
            return None
        raise PayloadError(ReasonCode.MISSING_VALUE, f"no value at {spec.value.text}", where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(ReasonCode.WRONG_TYPE, f"the value at {spec.value.text} is not a number", where)
    try:
        number = float(value)  # JSON integers are unbounded: one past a double's range overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PayloadError(
            ReasonCode.WRONG_TYPE, f"the value at {spec.value.text} is not a finite number", where
        )
    unit = unit_text = spec.unit
    if spec.unit_path is not None:
        unit_text = _scalar_text(spec.unit_path.get(document, reading))
        if unit_text is None:
            raise PayloadError(ReasonCode.MISSING_UNIT, f"no unit at {spec.unit_path.text}", where)
        unit = spec.units.get(unit_text.strip().lower()) or to_ucum(unit_text)
        if unit is None:
            raise PayloadError(
                ReasonCode.UNKNOWN_UNIT, f"the unit at {spec.unit_path.text} is not a known unit", where
            )
        if spec.convert_to and not can_convert(unit, spec.convert_to):
            raise PayloadError(
                ReasonCode.UNKNOWN_UNIT, f"the unit at {spec.unit_path.text} cannot be converted", where
            )
    assert unit is not None and unit_text is not None  # compile_template: unit or unit_path
    conversions = {unit: spec.convert_to} if spec.convert_to and spec.convert_to != unit else {}
    q = ucum_quantity(number, unit, unit_text.strip() or None, conversions)  # the sender's spelling kept
    if (spec.low is not None and q.value < spec.low) or (spec.high is not None and q.value > spec.high):
        raise PayloadError(
            ReasonCode.IMPLAUSIBLE_VALUE, f"the value is outside the plausible range of {spec.name}", where
        )
    return Measurement(spec, q.as_record())


def _reading(
    template: Template, document: Any, reading: Any, location: str, seen: dict[Any, ClinicalTime]
) -> Reading:
    device_id = _scalar_text(template.device_id.get(document, reading))
    if device_id is None:
        raise PayloadError(ReasonCode.MISSING_DEVICE, f"no device id at {template.device_id.text}", location)
    when = _time(template, template.time.get(document, reading), location, seen)
    ipp = None
    if template.patient_ipp is not None:
        ipp = _scalar_text(template.patient_ipp.get(document, reading))
        if ipp is None:
            raise PayloadError(
                ReasonCode.MISSING_PATIENT, f"no patient id at {template.patient_ipp.text}", location
            )
    model = _scalar_text(template.device_model.get(document, reading)) if template.device_model else None
    measurements: list[Measurement] = []
    matched = False
    for spec in template.observations:
        if not _matches(spec, document, reading):
            continue
        matched = True
        measured = _measure(spec, document, reading, location)
        if measured is not None:
            measurements.append(measured)
    if not matched:
        raise PayloadError(
            ReasonCode.NO_OBSERVATION, "the reading matches no observation of the template", location
        )
    if not measurements:
        raise PayloadError(ReasonCode.MISSING_VALUE, "the reading carries no value", location)
    return Reading(
        location,
        device_id,
        template.device_id_system,
        model,
        template.manufacturer,
        when,
        ipp,
        tuple(measurements),
    )


def extract(template: Template, document: Any, location: str = "$") -> list[Reading]:
    """Every reading of one document, all or nothing: the first unreadable reading raises PayloadError."""
    if not isinstance(document, dict):
        raise PayloadError(ReasonCode.WRONG_TYPE, "a document must be a JSON object", location)
    seen: dict[Any, ClinicalTime] = {}
    if template.readings is None:
        return [_reading(template, document, document, location, seen)]
    found = template.readings.all(document)
    if not found:
        raise PayloadError(ReasonCode.NO_READING, f"nothing at {template.readings.text}", location)
    return [_reading(template, document, item, f"{location}{where[1:]}", seen) for where, item in found]


def read_payload(template: Template, payload: bytes) -> list[Reading]:
    """Every reading of a raw payload (one document, or a top-level array of documents).

    Raises PayloadError only: the doors answer 400 (or dead-letter) on it, so a payload that trips an
    unforeseen corner (a value Python cannot convert) must not surface as a 500 with a traceback.
    """
    readings: list[Reading] = []
    try:
        for location, document in documents(parse_json(payload)):
            readings.extend(extract(template, document, location))
    except PayloadError:
        raise
    except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        kind = type(exc).__name__
        raise PayloadError(
            ReasonCode.WRONG_TYPE, f"the payload holds a value this template cannot read ({kind})"
        ) from None
    return readings
