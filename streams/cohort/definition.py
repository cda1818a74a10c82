"""Cohort definitions: which patients a cohort-scoped destination may receive, as checked configuration.

A national cancer cohort is a set of *patients*, not of records: once a patient has a cancer diagnosis
the platform receives that patient's history (a look-back window) and what follows, and nothing about
anybody else. The inclusion rule is therefore data a hospital's data-protection officer and INCa can
read and review — a YAML file per cohort, refused at load when it could silently match nothing or
everything (an unknown code system, an empty code set, an unknown destination, a malformed range) —
and this module is the only reader of those files. Evaluating a record against a rule is
:mod:`streams.cohort.rules`; the per-patient state is the stage's.

Codes are compared in one normal form: upper case, without the dot or spaces (``C34.1`` → ``C341``), so
the same diagnosis matches whether the HIS sends the French ATIH form with a dot or without.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from affluent.core.errors import ConfigError

COHORTS_DIR: Final = Path(__file__).resolve().parent / "cohorts"
DEFAULT_LOOKBACK_DAYS: Final = 365
# Verification statuses that never include a patient: a refuted or mistaken diagnosis is no evidence.
NEVER_EVIDENCE: Final = frozenset({"refuted", "entered-in-error"})
VERIFICATION_STATUSES: Final = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
# The code systems a rule may name (the key in ``include``), and what each matches in a canonical record.
CODE_SYSTEMS: Final = {
    "cim10": "CIM-10 / ICD-10 diagnosis codes (condition.code, additional codings)",
    "icdo3_topography": "CIM-O-3 topography (condition.tumour.topography)",
    "icdo3_morphology": "CIM-O-3 morphology with behaviour, e.g. 8140/3 (condition.tumour.morphology)",
}
_TOP_KEYS: Final = frozenset(
    {
        "cohort",
        "version",
        "description",
        "destinations",
        "include",
        "verification",
        "lookback_days",
        "exit",
        "sources",
    }
)
_NAME: Final = re.compile(r"[a-z][a-z0-9-]{1,62}")
_CODE: Final = re.compile(r"[A-Z][0-9][0-9A-Z]{0,5}")
_MORPHOLOGY: Final = re.compile(r"([0-9]{4})?/([0-9])")


class CohortError(ConfigError):
    """A cohort file that cannot be used; the message names the file, the key and what to do."""


def normal_code(code: str) -> str:
    """``C34.1`` / ``c341`` / ``C34 .1`` → ``C341``: the one form codes are compared in."""
    return re.sub(r"[\s.]", "", code).upper()


@dataclass(frozen=True, slots=True)
class CodeRange:
    """A range of 3-character categories, e.g. C00–C97, by the letter and the two-digit number."""

    letter: str
    low: int
    high: int

    def contains(self, code: str) -> bool:
        head = code[:3]
        if len(head) < 3 or head[0] != self.letter or not head[1:].isdigit():
            return False
        return self.low <= int(head[1:]) <= self.high


@dataclass(frozen=True, slots=True)
class CodeSet:
    """Prefixes (``C25``, ``C920``) and category ranges (``C00-C97``) of one code system."""

    prefixes: tuple[str, ...]
    ranges: tuple[CodeRange, ...]

    def matches(self, code: str) -> bool:
        normal = normal_code(code)
        return normal.startswith(self.prefixes) or any(r.contains(normal) for r in self.ranges)


@dataclass(frozen=True, slots=True)
class MorphologySet:
    """CIM-O-3 morphologies (``8140/3``) and behaviours (``/3``: malignant, primary site)."""

    codes: frozenset[str]
    behaviours: frozenset[str]

    def matches(self, code: str) -> bool:
        found = _MORPHOLOGY.fullmatch(code.strip())
        if found is None:
            return False
        return code.strip() in self.codes or found.group(2) in self.behaviours


@dataclass(frozen=True, slots=True)
class Exit:
    """When a member leaves: never, or a number of days after their death."""

    after_death_days: int | None = None  # None: never

    def describe(self) -> str:
        return "never" if self.after_death_days is None else f"{self.after_death_days} days after death"


@dataclass(frozen=True, slots=True)
class Cohort:
    name: str
    version: int
    description: str
    destinations: tuple[str, ...]
    cim10: CodeSet | None
    topography: CodeSet | None
    morphology: MorphologySet | None
    verification: frozenset[str]  # statuses accepted as evidence; a record without one is accepted
    lookback_days: int
    exit: Exit
    sources: tuple[str, ...]  # where the code lists come from, for people


def _fail(where: str, problem: str) -> CohortError:
    return CohortError(f"{where}: {problem}")


def _code_set(where: str, raw: Any) -> CodeSet:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "expected a non-empty list of codes, prefixes or ranges such as C00-C97")
    prefixes: list[str] = []
    ranges: list[CodeRange] = []
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise _fail(where, f"{item!r} is not a code")
        text = item.strip()
        if "-" in text:
            low, _, high = (normal_code(p) for p in text.partition("-"))
            if not (_CODE.fullmatch(low) and _CODE.fullmatch(high)) or len(low) != 3 or len(high) != 3:
                raise _fail(where, f"range {text!r}: give two 3-character categories, e.g. C00-C97")
            if low[0] != high[0] or not (low[1:].isdigit() and high[1:].isdigit()) or low > high:
                raise _fail(where, f"range {text!r}: same letter, low before high, e.g. D00-D09")
            ranges.append(CodeRange(low[0], int(low[1:]), int(high[1:])))
        else:
            code = normal_code(text)
            if not _CODE.fullmatch(code):
                raise _fail(
                    where, f"{text!r} is not a CIM-10 code or prefix (letter, two digits, e.g. C25 or C92.0)"
                )
            prefixes.append(code)
    return CodeSet(tuple(prefixes), tuple(ranges))


def _morphology(where: str, raw: Any) -> MorphologySet:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "expected a non-empty list such as ['/3'] or ['8140/3']")
    codes: set[str] = set()
    behaviours: set[str] = set()
    for item in raw:
        text = str(item).strip()
        found = _MORPHOLOGY.fullmatch(text)
        if found is None:
            raise _fail(where, f"{text!r} is not a CIM-O-3 morphology (8140/3) or behaviour (/3)")
        (codes.add(text) if found.group(1) else behaviours.add(found.group(2)))
    return MorphologySet(frozenset(codes), frozenset(behaviours))


def compile_cohort(raw: Any, source: str, destinations: Iterable[str]) -> Cohort:
    """Check one parsed cohort document; CohortError on the first fault, naming ``source``."""
    known = frozenset(destinations)
    if not isinstance(raw, Mapping):
        raise _fail(source, "expected a mapping with cohort, version, destinations and include")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("cohort", "version", "destinations", "include"):
        if key not in raw:
            raise _fail(source, f"missing key {key!r}")
    name = raw["cohort"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(f"{source}.cohort", "expected a lower-case name such as inca-lung")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(f"{source}.version", "expected a positive integer")
    feeds = raw["destinations"]
    if not isinstance(feeds, list) or not feeds or not all(isinstance(d, str) for d in feeds):
        raise _fail(f"{source}.destinations", "expected a non-empty list of destinations")
    for destination in feeds:
        if destination not in known:
            raise _fail(
                f"{source}.destinations",
                f"unknown destination {destination!r} (known: {', '.join(sorted(known)) or 'none'})",
            )
    include = raw["include"]
    if not isinstance(include, Mapping) or not include:
        raise _fail(f"{source}.include", f"expected one or more of {', '.join(CODE_SYSTEMS)}")
    systems = sorted(set(include) - set(CODE_SYSTEMS))
    if systems:
        raise _fail(
            f"{source}.include",
            f"unknown code system {systems[0]!r} (known: {', '.join(CODE_SYSTEMS)})",
        )
    cim10 = _code_set(f"{source}.include.cim10", include["cim10"]) if "cim10" in include else None
    topography = (
        _code_set(f"{source}.include.icdo3_topography", include["icdo3_topography"])
        if "icdo3_topography" in include
        else None
    )
    morphology = (
        _morphology(f"{source}.include.icdo3_morphology", include["icdo3_morphology"])
        if "icdo3_morphology" in include
        else None
    )
    verification = raw.get("verification", sorted(VERIFICATION_STATUSES - NEVER_EVIDENCE))
    if not isinstance(verification, list) or not verification:
        raise _fail(f"{source}.verification", "expected a non-empty list of verification statuses")
    for status in verification:
        if status not in VERIFICATION_STATUSES:
            raise _fail(f"{source}.verification", f"unknown status {status!r}")
        if status in NEVER_EVIDENCE:
            raise _fail(f"{source}.verification", f"{status!r} can never include a patient")
    lookback = raw.get("lookback_days", DEFAULT_LOOKBACK_DAYS)
    if isinstance(lookback, bool) or not isinstance(lookback, int) or not 0 <= lookback <= 3650:
        raise _fail(f"{source}.lookback_days", "expected a whole number of days from 0 to 3650")
    exit_rule = _exit(f"{source}.exit", raw.get("exit", "never"))
    sources = raw.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise _fail(f"{source}.sources", "expected a list of references")
    return Cohort(
        name=name,
        version=version,
        description=str(raw.get("description", "")).strip(),
        destinations=tuple(feeds),
        cim10=cim10,
        topography=topography,
        morphology=morphology,
        verification=frozenset(verification),
        lookback_days=lookback,
        exit=exit_rule,
        sources=tuple(sources),
    )


def _exit(where: str, raw: Any) -> Exit:
    if raw == "never":
        return Exit()
    if isinstance(raw, Mapping) and set(raw) == {"after_death_days"}:
        days = raw["after_death_days"]
        if not isinstance(days, bool) and isinstance(days, int) and 0 <= days <= 3650:
            return Exit(days)
    raise _fail(where, "expected 'never' or {after_death_days: N}")


def load_cohorts(destinations: Iterable[str], folder: Path | None = None) -> dict[str, Cohort]:
    """Every ``*.yaml`` of ``folder`` (default: the shipped cohorts) by name; any fault stops the load."""
    folder = folder or COHORTS_DIR
    known = tuple(destinations)
    cohorts: dict[str, Cohort] = {}
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise CohortError(f"{folder}: no cohort file (*.yaml)")
    for path in paths:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CohortError(f"{path}: cannot read ({type(exc).__name__})") from None
        except yaml.YAMLError as exc:
            raise CohortError(f"{path.name}: not valid YAML ({type(exc).__name__})") from None
        cohort = compile_cohort(raw, path.name, known)
        if cohort.name in cohorts:
            raise CohortError(f"{path.name}: cohort {cohort.name!r} is defined twice")
        cohorts[cohort.name] = cohort
    return cohorts


def scoped_destinations(cohorts: Mapping[str, Cohort]) -> frozenset[str]:
    """The destinations that receive cohort members only (every other destination is unchanged)."""
    return frozenset(d for cohort in cohorts.values() for d in cohort.destinations)
