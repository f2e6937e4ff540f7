"""relay/ and quota/ import in no circle; the remote agent imports no relay server part.

Every import counts, including those under `if TYPE_CHECKING:` and inside
functions: a circle that only type checkers follow still ties the parts together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("relay", "quota")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(*packages: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The known modules `path` imports (a `from pkg import mod` counts as pkg.mod)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m in known and m != name}


def import_graph(*packages: str) -> dict[str, set[str]]:
    modules = _modules(*packages)
    known = set(modules)
    return {name: _imported(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_relay_and_quota_import_no_circle() -> None:
    """No module of relay/ or quota/ reaches itself through imports (TYPE_CHECKING included)."""
    graph = import_graph(*PACKAGES)
    assert len(graph) > 30
    assert find_cycle(graph) is None


def test_cycle_finder_catches_a_type_checking_circle(tmp_path: Path) -> None:
    """The checker sees an import hidden under TYPE_CHECKING and reports the circle."""
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    b = tmp_path / "b.py"
    b.write_text("from pkg import a\n")
    known = {"pkg.a", "pkg.b"}
    graph = {"pkg.a": _imported(a, "pkg.a", known), "pkg.b": _imported(b, "pkg.b", known)}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_hub_parts_import_no_socket_part() -> None:
    """relay.hub imports none of the TCP, UDP, SSH or admin HTTP parts (they build on it)."""
    graph = import_graph(*PACKAGES)
    outer = ("relay.tcp", "relay.udp", "relay.ssh", "relay.admin", "relay.app")
    bad = {
        (name, dep)
        for name, deps in graph.items()
        if name.startswith("relay.hub")
        for dep in deps
        if dep.startswith(outer)
    }
    assert bad == set()


def test_remote_agent_imports_no_relay_server_module() -> None:
    """tools/agent may use the admin client at most; never the relay's server parts."""
    known = set(_modules("relay"))
    allowed = {"relay", "relay.admin", "relay.admin.client", "relay.config", "relay.errors"}
    bad = {
        (path.name, dep)
        for path in sorted((ROOT / "tools" / "agent").rglob("*.py"))
        for dep in _imported(path, _module_name(path), known)
        if dep not in allowed
    }
    assert bad == set()
