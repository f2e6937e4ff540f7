"""The one place structlog is configured: JSON lines (or text for people) on stderr.

Event names are snake_case and stable in both formats; `--log-level` and
`--log-format` of the commands that run a service come here (`LEVELS`, `FORMATS`).
"""

from __future__ import annotations

import logging
import sys

import structlog


class _Stderr:
    """Whatever sys.stderr is at write time (tests and daemons swap it).

    A line goes out in one write (print writes its end of line apart), so the lines
    of a relay's supervisor and workers, which share one stderr, never run together.
    """

    def __init__(self) -> None:
        self._part = ""

    def write(self, text: str) -> int:
        if not text.endswith("\n"):
            self._part += text
            return len(text)
        line, self._part = self._part + text, ""
        return sys.stderr.write(line)

    def flush(self) -> None:
        if self._part:
            part, self._part = self._part, ""
            sys.stderr.write(part)
        sys.stderr.flush()


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("json", "text")


def configure(level: str | int = logging.INFO, fmt: str = "json") -> None:
    """Log records at `level` ("debug".."error", or a logging constant) and above, as `fmt`."""
    threshold = LEVELS[level] if isinstance(level, str) else level
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "text"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,  # keeps structlog.testing.capture_logs usable
    )
    # asyncssh logs through the standard library: keep its chatter out of our lines
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
