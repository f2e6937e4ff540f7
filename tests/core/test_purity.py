"""quota/core must import nothing but the standard library (and itself)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "quota" / "core"
FORBIDDEN_STDLIB = {"asyncio", "socket", "sqlite3", "time", "logging", "selectors", "ssl"}


def _package(path: Path) -> str:
    """The dotted package a module file belongs to (its own name for an __init__.py)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def _imports(source: str, package: str) -> set[str]:
    """Every module `source` imports, absolute; relative imports resolved against `package`.

    `from quota import x` names `quota.x`: importing from a parent package of core
    is judged by what it brings in, so `from quota import billing` is caught.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            parts = (base if node.level else []) + ([node.module] if node.module else [])
            module = ".".join(parts)
            if module == "quota":
                names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                names.add(module)
    return names


def _forbidden(names: set[str]) -> set[str]:
    """The names that are neither quota.core (or inside it) nor a pure standard-library module."""

    def allowed(name: str) -> bool:
        if name == "quota.core" or name.startswith("quota.core."):
            return True
        top = name.split(".")[0]
        return top in sys.stdlib_module_names and top not in FORBIDDEN_STDLIB

    return {n for n in names if not allowed(n)}


def test_core_imports_only_stdlib_without_io_or_clock() -> None:
    """Every module of quota/core imports only pure standard-library modules or quota.core."""
    files = sorted(CORE.rglob("*.py"))
    assert files, "quota/core has no modules"
    bad: dict[str, set[str]] = {}
    for path in files:
        wrong = _forbidden(_imports(path.read_text(), _package(path)))
        if wrong:
            bad[path.name] = wrong
    assert bad == {}


def test_purity_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself flags asyncio and third-party imports."""
    names = _imports("import asyncio\nfrom aiohttp import web\nimport enum\n", "quota.core")
    assert _forbidden(names) == {"asyncio", "aiohttp"}


def test_purity_check_catches_core_importing_the_rest_of_quota() -> None:
    """An import from quota/core to billing, the agent or the quota package fails, relative too."""
    source = (
        "from quota.billing.store import Store\n"
        "import quota.agent.sync\n"
        "from quota import billing, core\n"
        "from ..agent import journal\n"
        "from .. import sqlite_open\n"
        "from quota.core.money import Rate\n"
        "from . import units\n"
        "from .units import parse_size\n"
        "import dataclasses\n"
    )
    assert _forbidden(_imports(source, "quota.core")) == {
        "quota.billing.store",
        "quota.agent.sync",
        "quota.billing",
        "quota.agent",
        "quota.sqlite_open",
    }
