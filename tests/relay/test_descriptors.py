"""Descriptors: the soft open-files limit is raised; EMFILE reports are throttled, others pass."""

from __future__ import annotations

import asyncio
import errno
import resource
from typing import Any

from structlog.testing import capture_logs

from relay.descriptors import AcceptErrors, descriptor_limit, raise_nofile


def test_raise_nofile_takes_the_hard_limit() -> None:
    """After raise_nofile the soft limit is the hard one, and that is the limit reported."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        assert raise_nofile() == hard == descriptor_limit()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_emfile_on_accept_is_one_line_a_minute_and_other_errors_pass() -> None:
    """100 EMFILE reports make one `accept_out_of_descriptors` line; anything else goes on."""
    loop = asyncio.get_running_loop()
    handler = AcceptErrors(loop)
    passed: list[dict[str, Any]] = []
    loop.default_exception_handler = passed.append  # type: ignore[method-assign]
    try:
        with capture_logs() as logs:
            for _ in range(100):
                error = OSError(errno.EMFILE, "Too many open files")
                handler(
                    loop, {"message": "socket.accept() out of system resource", "exception": error}
                )
            handler(loop, {"message": "something else", "exception": ValueError("x")})
    finally:
        del loop.default_exception_handler
    lines = [x for x in logs if x["event"] == "accept_out_of_descriptors"]
    assert [(x["error"], x["suppressed"]) for x in lines] == [("EMFILE", 0)]
    assert handler.count == 100
    assert [c["message"] for c in passed] == ["something else"]
