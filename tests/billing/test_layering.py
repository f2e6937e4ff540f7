"""Layering of the billing package: SQL only in the store and the repository, handlers typed."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

from quota.billing import routes
from quota.billing.routes import ROUTES

BILLING = Path(routes.__file__).parent
SQL_HOMES = {*(BILLING / "store").glob("*.py"), *(BILLING / "repo").glob("*.py")}
SQL = re.compile(
    r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"(CREATE|ALTER|DROP)\s+(TABLE|INDEX|TRIGGER|VIEW)|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b"
)
TX_CALLS = {
    "one",
    "all",
    "run",
    "run_many",
    "insert",
    "later",
    "execute",
    "executemany",
    "executescript",
}


def sql_found(source: str) -> list[str]:
    """Each SQL string and each statement sent on a transaction (`tx.run(...)`) in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SQL.search(node.value):
                found.append(f"line {node.lineno}: {node.value[:60]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if node.func.attr in TX_CALLS and name in ("tx", "conn", "_conn", "db"):
                found.append(f"line {node.lineno}: {name}.{node.func.attr}(...)")
    return found


def test_the_sql_detector_sees_strings_f_strings_and_transaction_calls() -> None:
    """The scan flags SQL text (also inside f-strings) and statements sent on a tx, nothing else."""
    source = (
        'a = "SELECT id FROM agents WHERE x = ?"\n'
        'b = f"UPDATE leases SET n = {n}"\n'
        "async def f(op):\n    await op.tx.run(q)\n"
        'c = "Select the rows from the ledger, then update settings."\n'
    )
    assert [f.split(":")[0] for f in sql_found(source)] == ["line 1", "line 2", "line 4"]


def test_no_sql_outside_the_store_and_the_repository() -> None:
    """Every module of quota.billing but store.py and repo/ is free of SQL."""
    offenders = {
        str(path.relative_to(BILLING)): found
        for path in sorted(BILLING.rglob("*.py"))
        if path not in SQL_HOMES and (found := sql_found(path.read_text()))
    }
    assert offenders == {}


def test_route_handlers_are_named_typed_functions() -> None:
    """Each route's handler is a named function whose annotations are the route's messages."""
    for route in ROUTES:
        handler = route.handler
        assert inspect.iscoroutinefunction(handler) and handler.__name__ != "<lambda>"
        hints = typing.get_type_hints(handler)
        params = inspect.signature(handler).parameters
        assert all(name in hints for name in params), route.name
        assert hints["return"] is route.response
        assert hints.get("body") is route.request
        assert route.keyed == ("key" in params)
        assert set(routes.path_params(route.path)) <= set(params), route.name
