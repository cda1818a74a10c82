"""What gets installed is what was reviewed: every dependency pinned with hashes in requirements.lock.

Before, `make setup` ran `pip install -e '.[dev]'`: whatever versions the index served that day, with no
hash, and an unpinned `pip install --upgrade pip` first.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _name(requirement: str) -> str:
    return (
        re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
        .lower()
        .replace("_", "-")
        .replace(".", "-")
    )


def locked() -> dict[str, list[str]]:
    """Package → its hashes, from the lock's ``name==version \\ --hash=…`` blocks."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in LOCK.read_text("utf-8").splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.-]+)==([^ ]+)", line)
        if pinned:
            current = _name(pinned.group(1))
            out[current] = []
        elif line.strip().startswith("--hash=sha256:") and current:
            out[current].append(line.strip())
    return out


def test_every_declared_dependency_is_pinned_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    declared = {_name(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]}
    pins = locked()
    assert declared <= set(pins), f"not in requirements.lock: {sorted(declared - set(pins))}"
    assert all(pins.values()), f"pinned without a hash: {[n for n, h in pins.items() if not h]}"
    assert not re.search(r"^--(find-links|index-url|extra-index-url)", LOCK.read_text("utf-8"), re.M)


def test_setup_installs_from_the_lock_only() -> None:
    recipe = (ROOT / "Makefile").read_text("utf-8").split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "requirements.lock" in recipe.splitlines()[0], "the venv is rebuilt when the lock changes"
    installs = [line.strip() for line in recipe.splitlines() if "pip install" in line]
    assert installs and all(
        "--require-hashes -r requirements.lock" in i or "--no-deps" in i for i in installs
    )
    assert not any("--upgrade" in i for i in installs)
    assert "make setup" in (ROOT / ".ci" / "run").read_text("utf-8")
