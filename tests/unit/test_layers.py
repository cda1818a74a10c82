"""The floor plan, checked by reading the imports (an AST walk): docs/architecture.md "Layers".

bench → the affluent roof → connectors | streams → schemas → formats → affluent.core. Imports point
down only; connectors and streams meet through Kafka topics and the layers below, never directly.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from formats.reasons import ANSWERS, FHIR_ISSUE_TYPES, TABLE_0357, ReasonCode, Refused
from schemas.deadletter import dead_letter_record

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("affluent", "connectors", "streams", "schemas", "formats", "bench")
RANK = {
    "affluent.core": 0,
    "formats": 1,
    "schemas": 2,
    "connectors": 3,
    "streams": 3,
    "affluent": 4,
    "bench": 5,
}
# Libraries of the outside world: a pure formats layer reads and writes values, it does no I/O.
IMPURE = ("confluent_kafka", "asyncio", "aiohttp", "paho", "prometheus_client", "httpx", "socket")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if ".state" not in path.parts:
                found[_module_of(path)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _resolve(target: str) -> str | None:
    """The project module an import names (``pkg.mod.attr`` → ``pkg.mod``), or None for a library."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import in a module, at any depth (functions included)."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def _edges() -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for name in MODULES:
        for target, line in _imports(name):
            resolved = _resolve(target)
            if resolved is not None and resolved != name:
                edges[name].add((resolved, line))
    return edges


EDGES = _edges()


def layer(module: str) -> str:
    if module == "affluent.core" or module.startswith("affluent.core."):
        return "affluent.core"
    return module.split(".")[0]


def test_the_layers_are_all_known_and_the_walk_sees_the_code() -> None:
    assert {layer(m) for m in MODULES} == set(RANK)
    assert len(MODULES) > 100
    assert any(t == "formats.hl7.er7" for t, _ in EDGES["connectors.mllp.intake"])


def test_imports_point_downward_only() -> None:
    """Rule 1: no import reaches a higher layer, and connectors and streams never import each other."""
    upward = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
        for m, targets in EDGES.items()
        for t, line in targets
        if RANK[layer(t)] > RANK[layer(m)] or (RANK[layer(t)] == RANK[layer(m)] and layer(t) != layer(m))
    ]
    assert upward == []


def test_the_roofs_package_marker_imports_nothing() -> None:
    """``affluent/__init__.py`` is imported by every module of the floor: it must not pull the roof in."""
    assert EDGES.get("affluent", set()) == set()


def test_the_simulator_and_the_local_stack_serve_only_the_roof() -> None:
    """affluent.sim (simulator, demo, accounting) sits on top: only the CLI and the benchmarks use it;
    the local stack does not need it."""
    users = {
        m
        for m, targets in EDGES.items()
        for t, _ in targets
        if t.startswith("affluent.sim") and not m.startswith("affluent.sim")
    }
    assert users <= {"affluent.cli"} | {m for m in MODULES if m.startswith("bench")}


def test_formats_is_pure() -> None:
    """Rule 2: formats/ imports no Kafka client, no event loop, no HTTP, MQTT or metrics library."""
    impure = [
        f"{m}:{line} imports {target}"
        for m in MODULES
        if layer(m) == "formats"
        for target, line in _imports(m)
        if target.split(".")[0] in IMPURE
    ]
    assert impure == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: {t for t, _ in EDGES.get(m, ())} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycles_between_files() -> None:
    """Rule 6: no two modules import each other, directly or through others (the layers above then
    cannot have cycles either: rule 1 forbids any upward edge)."""
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a fake edge closing a loop is found."""
    EDGES["formats.reasons"].add(("formats.hl7.er7", 0))
    try:
        assert any("formats.reasons" in c for c in _cycles())
    finally:
        EDGES["formats.reasons"].discard(("formats.hl7.er7", 0))


# --- rule 3: one vocabulary of reasons ---------------------------------------------------------------

# Constructors and helpers whose first argument (or ``reason_code=``/``code=``) is a reason.
REASON_TAKERS = {
    "MappingError",
    "Refused",
    "Rejected",
    "Rejection",
    "PayloadError",
    "Er7Error",
    "IdentityError",
    "Resolution",
    "_dead",
    "dead_letter_record",
    "write",
}


def test_no_reason_is_a_string_literal() -> None:
    """Every refusal names a ReasonCode member; a string in its place fails here."""
    literals = []
    for m, tree in TREES.items():
        if layer(m) == "bench" or m == "formats.reasons":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            candidates = [k.value for k in node.keywords if k.arg in ("reason_code", "code")]
            if name in REASON_TAKERS and name != "write":
                candidates += node.args[:1]
            literals += [
                f"{m}:{c.lineno} {name}({c.value!r})"
                for c in candidates
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
    assert literals == []


def test_every_reason_has_its_four_answers() -> None:
    assert set(ANSWERS) == set(ReasonCode)
    for code in ReasonCode:
        assert code.hl7_error in TABLE_0357 and code.hl7_error != "0", code
        assert 400 <= code.http_status < 600, code
        assert code.fhir_issue in FHIR_ISSUE_TYPES, code
        assert code.text and code.value == code.value.lower(), code
    assert len({c.value for c in ReasonCode}) == len(ReasonCode)


def test_a_reason_outside_the_vocabulary_is_refused_at_once() -> None:
    with pytest.raises(ValueError):
        Refused("made_up_reason")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dead_letter_record(stage="normalize", reason_code="made_up_reason", reason="x")  # type: ignore[arg-type]
    record = dead_letter_record(stage="normalize", reason_code=ReasonCode.NO_PATIENT, reason="x")
    assert record["reason_code"] == "no_patient" and type(record["reason_code"]) is str


def test_the_reasons_page_lists_every_reason() -> None:
    """docs/operations.md's table of reasons is the operator's side of the vocabulary."""
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [c.value for c in ReasonCode if f"`{c.value}`" not in page]
    assert missing == []


# --- rule 4: one place per decision ------------------------------------------------------------------

_INS_OID = re.compile(r"(urn:oid:)?1\.2\.250\.1\.213\.1\.4\.\d+")
_BELOW_THE_ROOF = ("affluent.core", "formats", "schemas", "connectors", "streams")


def _constants(m: str) -> Iterator[tuple[int, str]]:
    for node in ast.walk(TREES[m]):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_ins_qualification_is_decided_only_in_formats_clinical_identity() -> None:
    """The INS OIDs and the QUAL status appear in one module; everyone else asks it."""
    elsewhere = [
        f"{m}:{line} {value!r}"
        for m in MODULES
        if layer(m) in _BELOW_THE_ROOF and m != "formats.clinical.identity"
        for line, value in _constants(m)
        if value == "QUAL" or _INS_OID.fullmatch(value)
    ]
    assert elsewhere == []


def test_opposition_is_decided_in_one_module() -> None:
    """Only streams/pseudonymize/opposition.py defines how objections are matched, and the stage and the
    accounting both ask its one function ``withheld``."""
    defining = {
        m
        for m, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.name in ("is_opposed", "opposition_key", "identity_forms", "withheld")
    }
    assert defining == {"streams.pseudonymize.opposition"}
    askers = {m for m, targets in EDGES.items() for t, _ in targets if t == "streams.pseudonymize.opposition"}
    assert {"streams.pseudonymize.stage", "affluent.sim.simulate"} <= askers


# --- rule 5: every setting lives in Settings ---------------------------------------------------------

# Modules that may read the environment: the settings loader itself, the key providers (keys are not
# settings: they never sit in a settings file), a puller source's token (named by its configuration),
# and the roof, which builds children's environments.
ENVIRONMENT_READERS = {
    "affluent.core.settings",
    "streams.pseudonymize.keys",
    "streams.pseudonymize.worker",  # load_keys: AFFLUENT_PSEUDO_KEY_FILE and key variables
    "connectors.fhir_poll.config",
    "streams.pseudonymize.cli",  # AFFLUENT_LOG_LEVEL, read before settings load (logging of the load itself)
}


def test_every_setting_lives_in_settings() -> None:
    readers = []
    for m, tree in TREES.items():
        if layer(m) not in _BELOW_THE_ROOF or m in ENVIRONMENT_READERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(f"{m}:{node.lineno}")
    assert readers == []


def test_the_environment_check_sees_a_reader() -> None:
    """The walk above can fail: it does see the settings loader read the environment."""
    assert any(
        isinstance(n, ast.Attribute) and n.attr == "environ"
        for n in ast.walk(TREES["affluent.core.settings"])
    )


def test_no_module_is_larger_than_the_limit() -> None:
    """A file that grows past ~600 lines is several modules: split it along its decisions."""
    sizes = {m: len(MODULES[m].read_text(encoding="utf-8").splitlines()) for m in MODULES}
    big = {
        m: n
        for m, n in sizes.items()
        if n > 700 and layer(m) in _BELOW_THE_ROOF and m not in {"formats.hl7.er7"}
    }
    assert big == {}
