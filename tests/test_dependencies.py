"""Every runtime dependency declared in pyproject.toml is imported by relay: an unused one
is only supply-chain surface and install time."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imported_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_declared_dependency_is_imported() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    # distribution name -> the top-level modules it installs (e.g. beautifulsoup4 -> bs4)
    provides: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            provides.setdefault(_normalize(distribution), set()).add(module)
    imported = imported_modules()
    unused = []
    for requirement in declared:
        name = _normalize(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0])
        if not provides.get(name, {name.replace("-", "_")}) & imported:
            unused.append(requirement)
    assert unused == []


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
