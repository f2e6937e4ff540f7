"""The console's pages (GET): sign-in, overview, usage, ledger and its CSV, statement.

Invariants:
- Each page reads through the service's own methods as the signed-in
  account's principal, so it shows exactly what that account's token could
  read through the API, and nothing of another account.
- Reads change nothing; the CSV export streams the whole ledger page by page.
"""

from __future__ import annotations

import csv
import io

from aiohttp import web

from quota.billing.auth import Principal
from quota.billing.console import views
from quota.billing.console.chart import usage_chart
from quota.billing.console.web import (
    Refused,
    pre_session,
    redirect,
    render,
    service_of,
    signed_in,
    with_pre_session,
)
from quota.billing.op import Op, monthly_total
from quota.billing.repo import console as rows
from quota.contract import wire

LEDGER_PAGE = 50
CSV_PAGE = 1000


async def index(request: web.Request) -> web.StreamResponse:
    await signed_in(request)
    return redirect("/overview")


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    pre_session(request)
    return with_pre_session(request, render(request, "sign_in.html", {}))


async def link_page(request: web.Request) -> web.StreamResponse:
    """A page with one button: following a link alone (a mail scanner's GET) uses nothing."""
    pre_session(request)
    context = {"token": request.match_info["token"]}
    return with_pre_session(request, render(request, "link.html", context))


async def _names(request: web.Request, who: Principal) -> dict[str, str]:
    agents = await service_of(request).agents.of_account(who, who.id)
    return {a.id: a.name for a in agents.agents}


async def overview(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    service = service_of(request)
    account = await service.accounts.get(who, who.id)
    agents = await service.agents.of_account(who, who.id)
    catalogue = service.plans.catalogue()

    async def read_total(op: Op) -> int:
        return await monthly_total(op, who.id)

    balance = views.Balance(
        balance=account.balance, monthly_total=await service.runner.read(read_total)
    )
    context = {
        "page": "/overview",
        "account": account,
        "balance": balance,
        "agents": [views.agent_view(a, catalogue) for a in agents.agents],
        "catalogue": catalogue,
        "notice": request.query.get("notice", ""),
    }
    return render(request, "overview.html", context)


async def usage(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    service = service_of(request)
    today = service.runner.clock.now_ms() // rows.DAY_MS
    since = (today - views.USAGE_DAYS + 1) * rows.DAY_MS

    async def read(op: Op) -> list[rows.DayUsage]:
        return await rows.usage_by_day(op.tx, who.id, since)

    table = views.usage_table(await service.runner.read(read), today)
    names = await _names(request, who)
    context = {
        "page": "/usage",
        "table": table,
        "chart": usage_chart(table, names),
        "names": names,
        "day_label": views.day_label,
    }
    return render(request, "usage.html", context)


def _after(request: web.Request) -> int:
    raw = request.query.get("after", "0")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise Refused(400, "after: must be a ledger entry id")
    return int(raw)


def _kind_filter(request: web.Request) -> dict[str, object]:
    kind = request.query.get("kind", "")
    if kind and kind not in wire.KINDS:
        raise Refused(400, f"kind: {kind!r} is not one of {', '.join(wire.KINDS)}")
    return {"kind": kind} if kind else {}


async def ledger(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    filters, after = _kind_filter(request), _after(request)
    service = service_of(request)
    page = await service.accounts.ledger(
        who, who.id, after=after, limit=LEDGER_PAGE, filters=filters
    )

    async def read_previous(op: Op) -> int | None:
        kind = str(filters["kind"]) if filters else None
        return await rows.previous_cursor(op.tx, who.id, after, LEDGER_PAGE, kind)

    context = {
        "page": "/ledger",
        "entries": page.entries,
        "next_cursor": page.next_cursor,
        "previous_cursor": await service.runner.read(read_previous),
        "kind": filters.get("kind", ""),
        "kinds": wire.KINDS,
        "names": await _names(request, who),
    }
    return render(request, "ledger.html", context)


async def ledger_csv(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    service = service_of(request)
    names = await _names(request, who)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="ledger-{who.id}.csv"',
        }
    )
    await response.prepare(request)
    after: int | None = 0
    header = True
    while after is not None:
        page = await service.accounts.ledger(who, who.id, after=after, limit=CSV_PAGE, filters={})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        if header:
            writer.writerow(views.CSV_HEADER)
            header = False
        writer.writerows(views.csv_row(e, names) for e in page.entries)
        await response.write(out.getvalue().encode())
        after = page.next_cursor
    await response.write_eof()
    return response


async def statement(request: web.Request) -> web.StreamResponse:
    who = await signed_in(request)
    service = service_of(request)
    now = service.runner.clock.now_ms()
    asked = request.query.get("month")
    month = views.month_of(now) if asked is None else views.parse_month(asked)
    if month is None:
        raise Refused(400, "month: write it as YYYY-MM, for example 2026-12")
    account = await service.accounts.get(who, who.id)

    async def read(op: Op) -> views.Statement:
        start, end = month.start_ms, month.end_ms
        opening = await rows.balance_before(op.tx, who.id, start)
        kinds = await rows.totals_by_kind(op.tx, who.id, start, end)
        days = [
            d for d in await rows.usage_by_day(op.tx, who.id, start) if d.day * rows.DAY_MS < end
        ]
        table = views.usage_table(days, end // rows.DAY_MS - 1, (end - start) // rows.DAY_MS)
        closing = opening + sum(k.amount for k in kinds)
        return views.Statement(
            account=account, month=month, opening=opening, closing=closing, kinds=kinds, usage=table
        )

    context = {
        "page": "/statement",
        "statement": await service.runner.read(read),
        "names": await _names(request, who),
        "now": now,
    }
    return render(request, "statement.html", context)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", index)
    router.add_get("/sign-in", sign_in_page)
    router.add_get("/link/{token}", link_page)
    router.add_get("/overview", overview)
    router.add_get("/usage", usage)
    router.add_get("/ledger", ledger)
    router.add_get("/ledger.csv", ledger_csv)
    router.add_get("/statement", statement)
