"""Units to UCUM, with the few conversions a destination may ask for.

Laboratory and device systems write units as free text ("g/l", "µmol/L", "mmHg", "bpm"); the canonical
model carries the UCUM code, keeps what the source wrote in ``original_unit``, and marks a unit it could
not map (``unit_system`` null) instead of guessing. Conversions (pounds to kilograms, Fahrenheit to
Celsius) happen only when the policy lists them, because a platform may want the measured value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

UCUM_SYSTEM = "http://unitsofmeasure.org"
MDC_SYSTEM = "urn:iso:std:iso:11073:10101"

_SYNONYMS: dict[str, str] = {
    "g/l": "g/L",
    "mg/l": "mg/L",
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "mmol/l": "mmol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "umol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "meq/l": "meq/L",
    "ui/l": "[IU]/L",
    "iu/l": "[IU]/L",
    "u/l": "U/L",
    "mui/l": "m[IU]/L",
    "miu/l": "m[IU]/L",
    "g/l (10*9)": "10*9/L",
    "giga/l": "10*9/L",
    "10^9/l": "10*9/L",
    "10*9/l": "10*9/L",
    "tera/l": "10*12/L",
    "10^12/l": "10*12/L",
    "10*12/l": "10*12/L",
    "fl": "fL",
    "pg": "pg",
    "%": "%",
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "cmh2o": "cm[H2O]",
    "bpm": "/min",
    "/min": "/min",
    "battements/min": "/min",
    "min-1": "/min",
    "°c": "Cel",
    "cel": "Cel",
    "degc": "Cel",
    "°f": "[degF]",
    "degf": "[degF]",
    "[degf]": "[degF]",
    "kg": "kg",
    "g": "g",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "cm": "cm",
    "m": "m",
    "mm": "mm",
    "in": "[in_i]",
    "kg/m2": "kg/m2",
    "kg/m²": "kg/m2",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1,73m2": "mL/min/{1.73_m2}",
    "ml": "mL",
    "l": "L",
    "mm/h": "mm/h",
    "s": "s",
    "sec": "s",
    "h": "h",
    "/mm3": "/mm3",
    "mosm/kg": "mosm/kg",
    "ng/ml": "ng/mL",
    "µg/l": "ug/L",
    "ug/l": "ug/L",
    "µg/ml": "ug/mL",
    "ratio": "{ratio}",
    "inr": "{INR}",
    "{inr}": "{INR}",
    "/µl": "/uL",
    "/ul": "/uL",
}

_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("[lb_av]", "kg"): lambda v: v * 0.45359237,
    ("[degF]", "Cel"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("g", "kg"): lambda v: v / 1000.0,
    ("[in_i]", "cm"): lambda v: v * 2.54,
}

DEFAULT_CONVERSIONS: Mapping[str, str] = {"[lb_av]": "kg", "[degF]": "Cel"}

# IEEE 11073-10101 units (numeric code and reference id) → UCUM, for the units devices send; one table for
# the HL7 (OBX-6 ``^MDC``) and FHIR (``valueQuantity.system`` MDC) paths, so a reading gets the same unit
# through either door.
_MDC_UNITS: dict[str, str] = {
    "262688": "%",
    "MDC_DIM_PERCENT": "%",
    "264864": "/min",
    "MDC_DIM_BEAT_PER_MIN": "/min",
    "264928": "/min",
    "MDC_DIM_RESP_PER_MIN": "/min",
    "266016": "mm[Hg]",
    "MDC_DIM_MMHG": "mm[Hg]",
    "268192": "Cel",
    "MDC_DIM_DEGC": "Cel",
    "MDC_DIM_FAHR": "[degF]",
    "263875": "kg",
    "MDC_DIM_KILO_G": "kg",
    "MDC_DIM_LB": "[lb_av]",
    "MDC_DIM_CENTI_M": "cm",
    "MDC_DIM_INCH": "[in_i]",
    "MDC_DIM_KG_PER_M_SQ": "kg/m2",
    "MDC_DIM_MILLI_G_PER_DL": "mg/dL",
    "MDC_DIM_MILLI_MOLE_PER_L": "mmol/L",
    "MDC_DIM_MILLI_L": "mL",
}


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str | None
    unit_system: str | None
    original_unit: str | None

    def as_record(self, comparator: str | None = None) -> dict[str, object]:
        return {
            "value": self.value,
            "comparator": comparator,
            "unit": self.unit,
            "unit_system": self.unit_system,
            "original_unit": self.original_unit,
        }


def to_ucum(unit: str) -> str | None:
    """The UCUM code for a unit as written, or None when it is not recognised."""
    text = unit.strip()
    if not text:
        return None
    return _SYNONYMS.get(text.lower()) or _SYNONYMS.get(text.replace(" ", "").lower())


def mdc_to_ucum(*codes: str | None) -> str | None:
    """The UCUM code of the first IEEE 11073 unit (numeric code or MDC_DIM_ reference id) known."""
    for code in codes:
        ucum = _MDC_UNITS.get(code.strip()) if code else None
        if ucum is not None:
            return ucum
    return None


def ucum_quantity(
    value: float, ucum: str, original: str | None, conversions: Mapping[str, str] = DEFAULT_CONVERSIONS
) -> Quantity:
    """A value already known to be in the UCUM unit ``ucum``, converted when ``conversions`` asks.

    A conversion that would leave the double range (an absurd value) is not made: the value stays in
    its own unit rather than becoming infinity.
    """
    target = conversions.get(ucum)
    if target is not None and (ucum, target) in _CONVERSIONS:
        converted = round(_CONVERSIONS[(ucum, target)](value), 6)
        if math.isfinite(converted):
            return Quantity(converted, target, UCUM_SYSTEM, original)
    return Quantity(value, ucum, UCUM_SYSTEM, original)


def quantity(value: float, unit: str, conversions: Mapping[str, str] = DEFAULT_CONVERSIONS) -> Quantity:
    original = unit.strip() or None
    ucum = to_ucum(unit) if original else None
    if ucum is None:
        return Quantity(value, original, None, original)
    return ucum_quantity(value, ucum, original, conversions)


def can_convert(source: str, target: str) -> bool:
    """Whether :func:`quantity` can convert between two UCUM codes (templates check it at load)."""
    return source == target or (source, target) in _CONVERSIONS
