"""The console in a real headless Chromium: sign-in, CSRF, CSV download, keyboard use."""

from __future__ import annotations

import asyncio
import csv
import io

from selenium.webdriver import Chrome
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.console.client import Setup
from tests.rigs.browser import Browser
from tests.rigs.waits import poll

FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea"


async def _sign_in(browser: Browser, setup: Setup) -> None:
    """Type the token into the focused field and press Enter, as a person would."""
    await browser.get(setup.server.url + "/console/sign-in")
    await browser.do(lambda d: d.switch_to.active_element.send_keys(setup.token, Keys.ENTER))
    await poll(lambda: _at(browser, "/console/overview"), "the overview after sign-in")


async def _at(browser: Browser, path: str) -> bool:
    return (await browser.url()).split("?")[0].split("#")[0].endswith(path)


async def test_sign_in_with_the_account_token(browser: Browser, lone_setup: Setup) -> None:
    """Token plus Enter opens the overview with the balance and both agents."""
    await _sign_in(browser, lone_setup)
    assert (await browser.text("#balance")) == "15.000 coin"
    main = await browser.text("main")
    assert "nas" in main and "tech" in main and "n/a: support agents pay nothing" in main
    cookie = await browser.do(lambda d: d.get_cookie("qr_console"))
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await browser.do(lambda d: d.execute_script("return document.cookie")) == ""


async def test_one_time_link_signs_in_once(browser: Browser, lone_setup: Setup) -> None:
    """Following the link and pressing Continue signs in; the same link later is refused."""
    link = await lone_setup.api.ok("POST", f"/v1/accounts/{lone_setup.account}/console-links")
    url = lone_setup.server.url + link["path"]
    await browser.get(url)
    await browser.do(lambda d: d.find_element(By.CSS_SELECTOR, "#link-sign-in button").click())
    await poll(lambda: _at(browser, "/console/overview"), "the overview after the link")
    await browser.do(lambda d: d.delete_all_cookies())
    await browser.get(url)
    await browser.do(lambda d: d.find_element(By.CSS_SELECTOR, "#link-sign-in button").click())
    await poll(lambda: _at(browser, "/console/link"), "the refusal page")
    assert "already used or has expired" in await browser.text("#error-message")
    await browser.get(lone_setup.server.url + "/console/overview")
    assert await _at(browser, "/console/sign-in")


async def test_a_form_with_a_forged_csrf_token_is_refused(
    browser: Browser, lone_setup: Setup
) -> None:
    """Changing the form's CSRF token in the page gets 403 and buys nothing."""
    await _sign_in(browser, lone_setup)
    form = f"form[action='/console/agents/{lone_setup.agent}/packages']"

    def forge(d: Chrome) -> None:
        field = d.find_element(By.CSS_SELECTOR, f"{form} input[name=csrf]")
        d.execute_script("arguments[0].value = 'f' + arguments[0].value.slice(1)", field)
        # submitted by the form itself: a click under two loaded test processes was sometimes lost
        d.execute_script("arguments[0].form.requestSubmit()", field)

    await browser.do(forge)
    await poll(lambda: _at(browser, "/packages"), "the refusal page")
    assert (await browser.text("h1")) == "Error 403"
    assert await lone_setup.api.balance(lone_setup.account) == 15_000


async def test_csv_export_downloads_the_ledger(browser: Browser, lone_setup: Setup) -> None:
    """The export link downloads a CSV file holding every ledger entry."""
    await _sign_in(browser, lone_setup)
    await browser.do(lambda d: d.find_element(By.CSS_SELECTOR, "nav a[href$='/ledger']").click())
    await poll(lambda: _at(browser, "/console/ledger"), "the ledger page")
    await browser.do(lambda d: d.find_element(By.ID, "csv").click())
    target = browser.downloads / f"ledger-{lone_setup.account}.csv"
    await poll(target.exists, "the CSV download", timeout=20)
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert rows[0][0] == "id" and [r[2] for r in rows[1:]] == ["deposit", "subscription"]
    assert [r[5] for r in rows[1:]] == ["20.000", "-5.000"]


async def test_tab_reaches_every_control_in_order_and_enter_submits(
    browser: Browser, lone_setup: Setup
) -> None:
    """From the top, Tab visits every link, field and button in page order; Enter saves."""
    await _sign_in(browser, lone_setup)
    count = await browser.do(
        lambda d: d.execute_script(f"return document.querySelectorAll('{FOCUSABLE}').length")
    )
    index = f"return Array.from(document.querySelectorAll('{FOCUSABLE}'))"
    index += ".indexOf(document.activeElement)"

    def tab_through(d: Chrome) -> list[int]:
        d.execute_script("document.activeElement.blur()")
        seen = []
        for _ in range(count):
            ActionChains(d).send_keys(Keys.TAB).perform()
            seen.append(d.execute_script(index))
        return seen

    assert count > 10
    assert await browser.do(tab_through) == list(range(count))
    limit = f"#{lone_setup.agent}-limit"

    def type_limit(d: Chrome) -> None:
        field = d.find_element(By.CSS_SELECTOR, limit)
        while d.switch_to.active_element != field:
            ActionChains(d).send_keys(Keys.TAB).perform()
        ActionChains(d).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
        ActionChains(d).send_keys("3.25", Keys.ENTER).perform()

    await browser.do(type_limit)
    await poll(lambda: _saved(browser), "the settings to be saved")
    agent = await lone_setup.api.ok("GET", f"/v1/agents/{lone_setup.agent}", lone_setup.token)
    assert agent["topup_limit"] == 3_250


async def _saved(browser: Browser) -> bool:
    return "Settings saved" in await browser.source()


async def test_every_page_loads_with_no_policy_violation_or_error(
    browser: Browser, lone_setup: Setup
) -> None:
    """Each page renders under the strict policy: the browser logs no refusal and no error."""
    await lone_setup.api.usage(1, [{"agent_id": lone_setup.agent, "bytes": 123_000_000}])
    await _sign_in(browser, lone_setup)
    for page in ("overview", "usage", "ledger", "statement", "webhooks"):
        await browser.get(f"{lone_setup.server.url}/console/{page}")
        assert await browser.errors() == [], page
        assert await browser.text("main h1"), page
        await asyncio.to_thread(browser.screenshot, f"console_{page}")
    bars = await browser.do(lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart rect.bar"))
    assert bars == []  # the statement page has no chart; the usage page had one bar
    await browser.get(f"{lone_setup.server.url}/console/usage")
    bars = await browser.do(lambda d: d.find_elements(By.CSS_SELECTOR, "#usage-chart rect.bar"))
    assert len(bars) == 1
