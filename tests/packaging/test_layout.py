"""The layout's import rules: no import circle in tools/, no test imports a conftest module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The modules among `known` that `tree` imports, at any depth (lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names & known


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module name -> the modules of `sources` it imports."""
    known = set(sources)
    return {name: imported(ast.parse(text), known) - {name} for name, text in sources.items()}


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle in `graph` (the modules along it), or [] when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for nxt in sorted(graph[node]):
            if found := visit(nxt, [*path, node]):
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return []


def package_sources(package: str) -> dict[str, str]:
    files = sorted((ROOT / package).rglob("*.py"))
    return {module_name(path, ROOT): path.read_text() for path in files}


def test_tools_has_no_import_circle() -> None:
    """No module under tools/ imports, directly or through others, a module that imports it."""
    graph = import_graph(package_sources("tools"))
    assert "tools.relay_cmd" in graph["tools.cli"]
    assert circle(graph) == []


def test_circle_finder_sees_a_circle_through_a_lazy_import() -> None:
    """A subcommand importing the command line back, even inside a function, is a circle."""
    sources = {
        "tools.cli": "from tools import relay_cmd\n",
        "tools.relay_cmd": "def run():\n    from tools.cli import CliError\n",
        "tools.errors": "",
    }
    assert circle(import_graph(sources)) == ["tools.cli", "tools.relay_cmd", "tools.cli"]


def test_no_test_imports_a_conftest_module() -> None:
    """Shared test code lives in importable modules; a conftest.py is only a fixture plugin."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)]
            if any(n == "conftest" or n.endswith(".conftest") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_conftest_files_hold_fixtures_only() -> None:
    """Every function a conftest.py defines is a pytest fixture, and it defines no class."""
    extra = []
    for path in sorted((ROOT / "tests").rglob("conftest.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                extra.append(f"{path.relative_to(ROOT)}: class {node.name}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                marks = [ast.unparse(d) for d in node.decorator_list]
                if not any(m.startswith("pytest.fixture") for m in marks):
                    extra.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert extra == []


def test_rigs_reach_the_product_through_two_modules() -> None:
    """tests/rigs imports nothing of quota, relay or tools but the admin client and HostPort."""
    reached: set[str] = set()
    for path in sorted((ROOT / "tests" / "rigs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                reached.add(node.module)
            elif isinstance(node, ast.Import):
                reached.update(alias.name for alias in node.names)
    product = {m for m in reached if m.split(".")[0] in ("quota", "relay", "tools")}
    assert product == {"relay.admin.client", "relay.config"}
