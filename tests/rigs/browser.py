"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium.

Invariants:
- The browser and its driver are the system's (`CHROMIUM`, `CHROMEDRIVER`);
  nothing is downloaded: Selenium is handed both paths, so its manager never runs.
- Whether browser tests run is one decision (`decide`), as for PostgreSQL:
  both found runs them; a missing one skips them with the reason, unless `CI`
  is set, where it fails.
- Every WebDriver call blocks, so tests on an event loop make them through
  `Browser.do` (a worker thread): the loop keeps serving the relay's and the
  ssh clients' pipes meanwhile.
- Each browser has a profile and a download folder of its own under the
  test's folder, and is quit by whoever started it; `screenshot` writes
  `SCREENSHOTS/<name>.png` (a git-ignored folder kept after the run).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.rigs.relay import ROOT

CHROMIUM = os.environ.get("QUOTARELAY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("QUOTARELAY_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
SKIP_PREFIX = "browser tests skipped"
T = TypeVar("T")


def missing(paths: tuple[str, ...] = (CHROMIUM, CHROMEDRIVER)) -> str | None:
    """None when Chromium and its driver are installed, else what is missing."""
    absent = [p for p in paths if shutil.which(p) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install chromium chromium-driver)"
    return None


def decide(reason: str | None, *, ci: bool) -> tuple[Literal["run", "skip", "fail"], str]:
    """What browser tests do, given why Chromium is unusable (None: it is usable)."""
    if reason is None:
        return "run", ""
    if ci:
        return "fail", f"CI is set and Chromium is required: {reason}"
    return "skip", f"{SKIP_PREFIX}: {reason} (with CI set this fails)"


def screenshot_name(test_id: str) -> str:
    """A file name for a test's node id: letters, digits, dots, dashes and underscores."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", test_id).strip("_")[:150]


class Browser:
    """One headless Chromium with its own profile and download folder."""

    def __init__(self, folder: Path, *, width: int = 1280, height: int = 1000) -> None:
        self.downloads = folder / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",  # tests run as root on CI machines
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={folder / 'profile'}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(arg)
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(self.downloads)}
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports, errors
        service = Service(executable_path=CHROMEDRIVER, log_output=str(folder / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(self.downloads)}
        )

    async def do(self, call: Callable[[webdriver.Chrome], T]) -> T:
        """Run a blocking WebDriver call in a worker thread."""
        return await asyncio.to_thread(call, self.driver)

    async def get(self, url: str) -> None:
        await self.do(lambda d: d.get(url))

    async def find(self, css: str) -> WebElement:
        return await self.do(lambda d: d.find_element(By.CSS_SELECTOR, css))

    async def text(self, css: str = "body") -> str:
        return await self.do(lambda d: d.find_element(By.CSS_SELECTOR, css).text)

    async def source(self) -> str:
        """The page's HTML as it stands (also while a new page loads, unlike `find`)."""
        return await self.do(lambda d: d.page_source)

    async def url(self) -> str:
        return await self.do(lambda d: d.current_url)

    async def errors(self) -> list[str]:
        """The page errors the browser logged since the last call (CSP refusals, script errors)."""
        entries: list[dict[str, Any]] = await self.do(lambda d: d.get_log("browser"))  # type: ignore[no-untyped-call]
        return [str(e["message"]) for e in entries if e.get("level") == "SEVERE"]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{screenshot_name(name)}.png"
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        self.driver.quit()
