"""Benchmarks of affluent on the machine at hand, written to BENCHMARKS.md (``make bench``).

This package is the only place where timing happens: tests assert behaviour, never speed, because a
shared CI machine makes timing assertions flaky. Every figure in the report is shown beside a
ceiling measured in the same run on the same machine, since an absolute rate alone says more about
the machine (and whatever else runs on it) than about the code.

Suites are pluggable: a module listed in :data:`SUITE_MODULES` registers one or more functions with
:func:`register`; each takes the run :class:`Options` and returns a
:class:`~bench.report.SuiteResult`. Modules are imported only when a suite of theirs is selected, so
that ``--only tokenizer`` does not pay for (or depend on) Kafka clients.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from bench.report import SuiteResult

__all__ = ["SUITES", "SUITE_MODULES", "Options", "Suite", "load_suites", "register"]


@dataclass(frozen=True, slots=True)
class Options:
    """What every suite needs to size itself: ``quick`` is the ~1 minute smoke run."""

    quick: bool = False

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full


Suite = Callable[[Options], SuiteResult]

# Suite name -> function, in run order. Filled by the modules below as they are imported.
SUITES: dict[str, Suite] = {}

# Run order of the suites; later issues append theirs (normalization, pseudonymization, end-to-end).
SUITE_MODULES: dict[str, str] = {
    "tokenizer": "bench.tokenizer",
    "mllp": "bench.mllp",
    "stages": "bench.stages",
    "fhir_rest": "bench.fhir_rest",
    "fhir_pull": "bench.fhir_pull",
    "devices": "bench.devices",
    "e2e": "bench.e2e",
    "e2e_channels": "bench.e2e_channels",
    "network": "bench.network",
}


def register(name: str) -> Callable[[Suite], Suite]:
    def add(function: Suite) -> Suite:
        if name in SUITES and SUITES[name] is not function:
            raise ValueError(f"two benchmark suites are called {name!r}")
        SUITES[name] = function
        return function

    return add


def load_suites(names: list[str] | None = None) -> dict[str, Suite]:
    """The selected suites in run order; unknown names raise KeyError listing the known ones."""
    selected = list(SUITE_MODULES) if names is None else names
    unknown = [n for n in selected if n not in SUITE_MODULES]
    if unknown:
        raise KeyError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITE_MODULES)}")
    for name in selected:
        importlib.import_module(SUITE_MODULES[name])
    return {name: SUITES[name] for name in SUITE_MODULES if name in selected}
