"""`quotarelay billing console-link ACCOUNT` prints a one-time URL that signs in once."""

from __future__ import annotations

import pytest

from tests.billing.api import ADMIN
from tests.console.client import Setup
from tools.cli import CliError, build_parser


async def _run(*argv: str) -> int:
    args = build_parser().parse_args(["billing", *argv])
    result: int = await args.func(args)
    return result


async def test_console_link_prints_a_url_that_signs_in_once(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first line is the URL alone; following it signs in; a second use is refused."""
    monkeypatch.setenv("QUOTARELAY_BILLING_URL", setup.server.url + "/")
    monkeypatch.setenv("QUOTARELAY_BILLING_TOKEN", ADMIN)
    assert await _run("console-link", setup.account) == 0
    url, until = capsys.readouterr().out.splitlines()
    assert url.startswith(setup.server.url + "/console/link/")
    assert until == "works once, until 2026-11-30 01:08:20 UTC"
    visitor = setup.visitor()
    try:
        path = url.removeprefix(setup.server.url)
        signed = await visitor.submit(await visitor.get(path), "/console/link")
        assert signed.url.endswith("/console/overview")
        again = await visitor.submit(await visitor.get(path), "/console/link")
        assert again.status == 403
    finally:
        await visitor.close()


async def test_console_link_for_an_unknown_account_is_a_one_line_error(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown account is a CliError naming the 404."""
    monkeypatch.setenv("QUOTARELAY_BILLING_URL", setup.server.url)
    monkeypatch.setenv("QUOTARELAY_BILLING_TOKEN", ADMIN)
    with pytest.raises(CliError, match="404: no account 'acc_nope'"):
        await _run("console-link", "acc_nope")
