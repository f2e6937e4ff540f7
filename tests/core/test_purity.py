"""quota/core must import nothing but the standard library (and itself)."""

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "quota" / "core"
FORBIDDEN_STDLIB = {"asyncio", "socket", "sqlite3", "time", "logging", "selectors", "ssl"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_only_stdlib_without_io_or_clock() -> None:
    """Every module of quota/core imports only pure standard-library modules or quota."""
    files = sorted(CORE.rglob("*.py"))
    assert files, "quota/core has no modules"
    bad: dict[str, set[str]] = {}
    for path in files:
        names = _imports(path) - {"quota", "__future__"}
        wrong = {n for n in names if n not in sys.stdlib_module_names or n in FORBIDDEN_STDLIB}
        if wrong:
            bad[path.name] = wrong
    assert bad == {}


def test_purity_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself flags asyncio and third-party imports."""
    sample = tmp_path / "m.py"
    sample.write_text("import asyncio\nfrom aiohttp import web\nimport enum\n")
    names = _imports(sample)
    assert {"asyncio", "aiohttp"} <= names
    assert "aiohttp" not in sys.stdlib_module_names
