"""Token rules: example tokens refused, demo tokens in the demo only, 32+ off loopback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.tokens import (
    DEMO_PREFIX,
    MIN_EXPOSED_ADMIN_TOKEN,
    admin_token_problem,
    is_loopback,
    token_problem,
)


def test_example_token_is_refused_even_in_the_demo() -> None:
    """The published example token is refused, naming the key, in the demo too."""
    for demo in (False, True):
        problem = token_problem("server.admin_token", "change-me-admin-token-0123456789", demo=demo)
        assert problem is not None and problem.startswith("server.admin_token: ")


def test_demo_token_only_in_the_demo() -> None:
    """A demo token is accepted when the demo runs and refused otherwise, naming the key."""
    token = DEMO_PREFIX + "x" * 32
    assert token_problem("admin.token", token, demo=True) is None
    problem = token_problem("admin.token", token, demo=False)
    assert (
        problem is not None and problem.startswith("admin.token: ") and "quotarelay up" in problem
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True),
        ("0.0.0.0", False), ("", False), ("::", False), ("192.0.2.7", False),
        ("relay.example", False),
    ],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Only loopback addresses and "localhost" count as loopback; all-addresses binds do not."""
    assert is_loopback(host) is loopback


def test_short_admin_token_refused_off_loopback() -> None:
    """A 1-character token on 0.0.0.0 is refused naming the key; on loopback the rule is silent."""
    problem = admin_token_problem("admin.token", "0.0.0.0", "x")
    assert problem == (
        "admin.token: an admin API on 0.0.0.0 (not loopback) needs a token of 32+ characters, got 1"
    )
    assert admin_token_problem("admin.token", "127.0.0.1", "x") is None


@given(st.text(min_size=1, max_size=80))
def test_no_problem_text_holds_the_token(token: str) -> None:
    """A problem text never shows the token it judges."""
    token = "tok-" + token
    for problem in (
        token_problem("k", token, demo=False),
        token_problem("k", DEMO_PREFIX + token, demo=False),
        admin_token_problem("k", "0.0.0.0", token[: MIN_EXPOSED_ADMIN_TOKEN - 1]),
    ):
        assert problem is None or token not in problem
