"""The browser rig's decision: run, skip with the reason, or fail under CI."""

from __future__ import annotations

from tests.rigs.browser import decide, missing, screenshot_name


def test_missing_names_what_is_not_installed() -> None:
    """A path that is not there is named, with the packages that bring it."""
    reason = missing(("/bin/sh", "/nonexistent/chromedriver"))
    assert reason is not None and "/nonexistent/chromedriver" in reason and "/bin/sh" not in reason
    assert "apt-get install chromium chromium-driver" in reason
    assert missing(("/bin/sh",)) is None


def test_decide_skips_with_the_reason_and_fails_under_ci() -> None:
    """Installed: run. Missing: skip saying why, unless CI is set, where it fails."""
    assert decide(None, ci=True) == ("run", "")
    action, message = decide("not installed: /usr/bin/chromium", ci=False)
    assert action == "skip" and "/usr/bin/chromium" in message and "CI" in message
    assert decide("not installed: x", ci=True)[0] == "fail"


def test_screenshot_names_are_plain_file_names() -> None:
    """A test id with brackets and slashes becomes a safe file name."""
    assert screenshot_name("test_x[sqlite-a/b]") == "test_x_sqlite-a_b"
