"""The console's pages and forms over plain HTTP: what each shows and what each form changes."""

from __future__ import annotations

import csv
import io
import re

from quota.billing.repo.console import previous_cursor
from tests.console.client import Setup, Visitor

MB = 1_000_000
DAY = 86_400_000


async def _signed_in(setup: Setup, visitor: Visitor) -> None:
    page = await visitor.sign_in(setup.token)
    assert page.url.endswith("/console/overview"), page.text


async def test_overview_shows_balance_agents_plan_and_bucket(
    setup: Setup, visitor: Visitor
) -> None:
    """Balance, agents with plan, bucket used/remaining, packages; support agents pay nothing."""
    await setup.api.usage(1, [{"agent_id": setup.agent, "bytes": 250 * MB}])
    await _signed_in(setup, visitor)
    text = (await visitor.get("/console/overview")).text
    assert '<p class="balance" id="balance">15.000 coin</p>' in text
    nas = text.split(f'id="{setup.agent}"', 1)[1].split("</article>", 1)[0]
    assert ">basic<" not in nas and "basic, until" in nas
    assert "250.0 MB used, 750.0 MB remaining of 1.0 GB" in nas
    assert "0 B remaining" in nas  # no package yet
    tech = text.split(f'id="{setup.support}"', 1)[1].split("</article>", 1)[0]
    assert "support agents pay nothing" in tech and "<form" not in tech


async def test_low_balance_is_shown_below_twice_the_monthly_plans(
    setup: Setup, visitor: Visitor
) -> None:
    """15 coin is not low for a 5-coin plan; after spending down to 9.5 it is."""
    await _signed_in(setup, visitor)
    assert 'id="low-balance"' not in (await visitor.get("/console/overview")).text
    body = {"amount": -5_500, "reason": "test spend"}
    await setup.api.ok("POST", f"/v1/accounts/{setup.account}/corrections", body=body)
    text = (await visitor.get("/console/overview")).text
    assert 'id="low-balance"' in text and "10.000 coin" in text


async def test_buying_a_package_through_the_console_charges_once(
    setup: Setup, visitor: Visitor
) -> None:
    """The buy form charges the package once, even when the same form is submitted twice."""
    await _signed_in(setup, visitor)
    page = await visitor.get("/console/overview")
    action = f"/console/agents/{setup.agent}/packages"
    fields = {**page.form(action), "package": "1G"}
    first = await visitor.post(action, fields)
    again = await visitor.post(action, fields)
    assert first.status == again.status == 200 and "Package bought" in first.text
    agent = await setup.api.ok("GET", f"/v1/agents/{setup.agent}", setup.token)
    assert agent["package_bytes"] == 10**9
    assert await setup.api.balance(setup.account) == 14_500


async def test_a_refused_purchase_shows_the_reason(setup: Setup, visitor: Visitor) -> None:
    """Not enough coin: a 402 page naming the balance, nothing bought."""
    await _signed_in(setup, visitor)
    action = f"/console/agents/{setup.agent}/packages"
    for _ in range(3):  # 3 x 4 coin of the 15
        bought = await visitor.submit(await visitor.get("/console/overview"), action, package="10G")
        assert bought.status == 200
    refused = await visitor.submit(await visitor.get("/console/overview"), action, package="10G")
    assert refused.status == 402 and "balance 3.000 cannot cover 4.000" in refused.text
    assert await setup.api.balance(setup.account) == 3_000


async def test_settings_form_edits_auto_renew_and_top_up(setup: Setup, visitor: Visitor) -> None:
    """Unticking auto-renew and choosing a top-up package with a limit is saved."""
    await _signed_in(setup, visitor)
    page = await visitor.get("/console/overview")
    action = f"/console/agents/{setup.agent}/settings"
    saved = await visitor.submit(page, action, topup_package="1G", topup_limit="2.5")
    assert saved.status == 200 and "Settings saved" in saved.text
    agent = await setup.api.ok("GET", f"/v1/agents/{setup.agent}", setup.token)
    assert (agent["auto_renew"], agent["topup_package"], agent["topup_limit"]) == (
        False,
        "1G",
        2_500,
    )
    bad = await visitor.submit(await visitor.get("/console/overview"), action, topup_limit="1.2.3")
    assert bad.status == 400 and "top-up limit" in bad.text.lower()


async def test_forms_without_a_valid_csrf_token_are_refused(setup: Setup, visitor: Visitor) -> None:
    """A signed-in POST without, or with another session's, CSRF token is 403 and buys nothing."""
    await _signed_in(setup, visitor)
    page = await visitor.get("/console/overview")
    action = f"/console/agents/{setup.agent}/packages"
    fields = page.form(action)
    other = setup.visitor()
    try:
        await other.sign_in(setup.token)
        foreign = (await other.get("/console/overview")).form(action)["csrf"]
    finally:
        await other.close()
    missing = await visitor.post(action, {"key": fields["key"], "package": "1G"})
    wrong = await visitor.post(action, {**fields, "csrf": foreign, "package": "1G"})
    assert (missing.status, wrong.status) == (403, 403)
    assert await setup.api.balance(setup.account) == 15_000


async def test_another_accounts_agent_is_not_found(setup: Setup, visitor: Visitor) -> None:
    """A form naming an agent of another account answers 404, like the API."""
    other, other_token = await setup.api.account("globex")
    foreign = (await setup.api.agent(other, other_token, "db"))["id"]
    await _signed_in(setup, visitor)
    page = await visitor.get("/console/overview")
    fields = page.form(f"/console/agents/{setup.agent}/packages")
    refused = await visitor.post(f"/console/agents/{foreign}/packages", {**fields, "package": "1G"})
    assert refused.status == 404


async def test_names_are_escaped(setup: Setup) -> None:
    """An account named like markup is shown as text."""
    account, token = await setup.api.account("<script>alert(1)</script>")
    visitor = setup.visitor()
    try:
        await visitor.sign_in(token)
        text = (await visitor.get("/console/overview")).text
    finally:
        await visitor.close()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert account in text


async def test_usage_chart_stacks_bytes_per_day_and_agent(setup: Setup, visitor: Visitor) -> None:
    """Usage over 30 days: one bar per agent and day with traffic, totals per agent."""
    other = (await setup.api.agent(setup.account, setup.token, "web"))["id"]
    await setup.api.ok("POST", f"/v1/agents/{other}/subscription", setup.token, {"plan": "basic"})
    await setup.api.usage(1, [{"agent_id": setup.agent, "bytes": 3 * MB}])
    setup.clock.advance(DAY)
    await setup.api.usage(2, [{"agent_id": setup.agent, "bytes": 5 * MB}])
    await setup.api.usage(3, [{"agent_id": other, "bytes": 2 * MB}])
    await _signed_in(setup, visitor)
    text = (await visitor.get("/console/usage")).text
    titles = re.findall(r'<rect class="bar"[^>]*><title>([^<]+)</title>', text)
    assert sorted(t.split(", ")[0] + ": " + t.split(": ")[1] for t in titles) == [
        "nas: 3.0 MB",
        "nas: 5.0 MB",
        "web: 2.0 MB",
    ]
    agents = text.split('id="usage-agents"', 1)[1]
    assert "<td>nas</td><td>8.0 MB</td>" in agents and "<td>web</td><td>2.0 MB</td>" in agents
    assert "<script" not in text and "style=" not in text


async def test_usage_older_than_30_days_is_left_out(setup: Setup, visitor: Visitor) -> None:
    """A day 30 days back falls outside the window."""
    await setup.api.usage(1, [{"agent_id": setup.agent, "bytes": 3 * MB}])
    setup.clock.advance(30 * DAY)
    await _signed_in(setup, visitor)
    text = (await visitor.get("/console/usage")).text
    assert 'id="no-usage"' in text and '<rect class="bar"' not in text


async def test_ledger_pages_by_50_with_readable_values(setup: Setup, visitor: Visitor) -> None:
    """50 entries a page, next and previous, times in UTC, coins and sizes for people."""
    for i in range(55):
        await setup.api.deposit(setup.account, 1_250, f"pay-x{i}")
    await _signed_in(setup, visitor)
    first = await visitor.get("/console/ledger")
    rows = re.findall(r"<tr>\s*<td>(\d+)</td>", first.text)
    assert len(rows) == 50 and rows[0] == "1"
    assert "2026-11-30 00:53:20 UTC" in first.text and "+1.250" in first.text
    following = re.search(r'href="/console/ledger\?after=(\d+)" id="next-page"', first.text)
    assert following is not None
    second = await visitor.get("/console/ledger", after=following.group(1))
    assert len(re.findall(r"<tr>\s*<td>(\d+)</td>", second.text)) == 57 - 50
    assert 'id="next-page"' not in second.text
    assert 'href="/console/ledger?after=0" id="previous-page"' in second.text
    assert 'id="previous-page"' not in first.text
    deposits = await visitor.get("/console/ledger", kind="deposit")
    assert len(re.findall(r"<tr>\s*<td>(\d+)</td>", deposits.text)) == 50
    assert (await visitor.get("/console/ledger", kind="nope")).status == 400
    assert (await visitor.get("/console/ledger", after="-1")).status == 400


async def test_csv_export_holds_every_entry(setup: Setup, visitor: Visitor) -> None:
    """The CSV has a header and every entry, coins exact, formula-like text defused."""
    for i in range(3):
        await setup.api.deposit(setup.account, 1_001, f"pay-c{i}")
    body = {"amount": -1, "reason": "=HYPERLINK(1)"}
    await setup.api.ok("POST", f"/v1/accounts/{setup.account}/corrections", body=body)
    await _signed_in(setup, visitor)
    async with visitor.session.get(setup.server.url + "/console/ledger.csv") as resp:
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in resp.headers["Content-Disposition"]
        table = list(csv.reader(io.StringIO(await resp.text())))
    assert table[0][:3] == ["id", "time_utc", "kind"]
    assert [r[2] for r in table[1:]] == ["deposit", "subscription", *["deposit"] * 3, "correction"]
    assert table[3][5] == "1.001" and table[2][5] == "-5.000" and table[2][4] == "nas"
    assert table[-1][9] == "'=HYPERLINK(1)" and table[-1][6] == "18.002"


async def test_statement_adds_up_the_month(setup: Setup, visitor: Visitor) -> None:
    """Opening + credits + debits = closing; kinds and traffic by agent for the month."""
    await setup.api.usage(1, [{"agent_id": setup.agent, "bytes": 7 * MB}])
    await _signed_in(setup, visitor)
    nov = await visitor.get("/console/statement", month="2026-11")
    assert 'id="opening">0.000 coin' in nov.text and 'id="closing">15.000 coin' in nov.text
    assert 'id="credits">+20.000 coin' in nov.text and 'id="debits">-5.000 coin' in nov.text
    assert '<td>nas</td><td class="num">7.0 MB</td>' in nov.text
    setup.clock.advance(3 * DAY)  # into December
    await setup.api.deposit(setup.account, 2_000, "pay-dec")
    await _signed_in(setup, visitor)  # the session of 3 days ago has ended
    dec = await visitor.get("/console/statement")
    assert "Statement for 2026-12" in dec.text
    assert 'id="opening">15.000 coin' in dec.text and 'id="closing">17.000 coin' in dec.text
    assert (await visitor.get("/console/statement", month="2026-13")).status == 400


async def test_previous_cursor_steps_back_one_page(setup: Setup) -> None:
    """With pages of 2, the page before "after 5" is "after 3" (entries 4 and 5)."""
    for i in range(4):
        await setup.api.deposit(setup.account, 1_000, f"pay-p{i}")  # entries 3..6
    async with setup.server.store.peek() as tx:
        got = [await previous_cursor(tx, setup.account, after, 2, None) for after in (0, 1, 2, 5)]
        deposits = await previous_cursor(tx, setup.account, 5, 2, "deposit")
    assert got == [None, 0, 0, 3]
    assert deposits == 3  # deposits 1, 3, 4, 5 and 6: the page before "after 5" is 4 and 5
