"""What the observability tests share: the metric table, the generated dashboards and alert rules.

``deploy/`` is not a Python package (it ships files, its generators are scripts), so its two generators
are loaded by path here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "metrics.md"
DASHBOARDS_DIR = ROOT / "deploy" / "grafana" / "dashboards"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "affluent.rules.yml"
# Values a test puts in place of Grafana's variables before asking Prometheus.
VARIABLES = {"$__rate_interval": "30s", "$destination": ".*", "${datasource}": ""}

Row = tuple[str, tuple[str, ...], set[str]]


def load(relative: str) -> ModuleType:
    path = ROOT / relative
    name = f"affluent_deploy_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def dashboards_module() -> Any:
    return load("deploy/grafana/dashboards.py")


def rules_module() -> Any:
    return load("deploy/prometheus/rules.py")


def metric_table(text: str | None = None) -> tuple[dict[str, Row], set[str]]:
    """(exported rows: name → type, label names, processes), announced-but-not-exported names."""
    rows: dict[str, Row] = {}
    pending: set[str] = set()
    section = ""
    for line in (TABLE.read_text(encoding="utf-8") if text is None else text).splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.fullmatch(r"`affluent_[a-z0-9_]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        if section == "Table":
            labels = tuple(sorted(re.findall(r"`([a-z_]+)`", cells[2])))
            rows[name] = (cells[1], labels, {p.strip() for p in cells[4].split(",")})
        elif section.startswith("Announced"):
            pending.add(name)
    return rows, pending


def panel_queries(directory: Path = DASHBOARDS_DIR) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every committed dashboard."""
    out = []
    for path in sorted(directory.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets") or []:
                out.append((path.name, str(panel["title"]), str(target["expr"])))
    return out


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown template variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The affluent metric families a query reads (histogram series map to their family)."""
    names = set(re.findall(r"affluent_[a-z0-9_]+", expr))
    return {
        re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n
        for n in names
    }


# Environment variables the processes read that are not Settings fields (see the modules that read them).
NON_SETTINGS_ENV = {"AFFLUENT_HEALTH_PORT", "AFFLUENT_PSEUDO_KEY_FILE"}


def unknown_settings(names: Any) -> list[str]:
    """The AFFLUENT_* names among ``names`` that name no Settings field (pydantic ignores them silently)."""
    from affluent.core.settings import Settings

    bad = []
    for key in names:
        if key in NON_SETTINGS_ENV:
            continue
        model: Any = Settings
        for part in key.removeprefix("AFFLUENT_").lower().split("__"):
            fields = getattr(model, "model_fields", {})
            if part not in fields:
                bad.append(key)
                break
            model = fields[part].annotation
    return bad
