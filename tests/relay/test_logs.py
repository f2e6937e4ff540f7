"""The relay's own log: one write per line, so processes sharing stderr never mix lines."""

from __future__ import annotations

import io

import pytest
import structlog

from relay.logs import configure


class Writes(io.StringIO):
    """A stderr that remembers each write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_log_line_is_written_whole_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON line and its end of line leave in one write (a worker's line cannot cut in)."""
    err = Writes()
    monkeypatch.setattr("sys.stderr", err)
    configure("info", "json")
    try:
        structlog.get_logger("relay").info("granted", agent_id="a", bytes=5)
    finally:
        structlog.reset_defaults()
    [line] = [c for c in err.calls if c]
    assert line.endswith("}\n") and line.count("\n") == 1 and '"event": "granted"' in line
