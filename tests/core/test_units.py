"""Sizes and durations parse to exact integers with clear errors."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.errors import InvalidValue
from quota.core.units import format_size, parse_duration_ms, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1500", 1500),
        ("10K", 10_000),
        ("10M", 10_000_000),
        ("1G", 10**9),
        ("1Gi", 2**30),
        ("64KiB", 65536),
        ("5mb", 5_000_000),
        (42, 42),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    """Decimal and binary suffixes give exact byte counts."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "1.5G", "-1", "10X", "G"])
def test_parse_size_rejects(text: str) -> None:
    """Malformed sizes raise InvalidValue naming the input."""
    with pytest.raises(InvalidValue, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("7", 7000),
        (3, 3000),
    ],
)
def test_parse_duration(text: str | int, expected: int) -> None:
    """Durations become integer milliseconds."""
    assert parse_duration_ms(text) == expected


def test_parse_duration_rejects() -> None:
    """A malformed duration names the accepted forms."""
    with pytest.raises(InvalidValue, match="500ms"):
        parse_duration_ms("5 minutes")


def test_format_size() -> None:
    """Round sizes print with a suffix, others as plain bytes."""
    assert (format_size(10_000_000), format_size(1234)) == ("10M", "1234")


@pytest.mark.parametrize(
    "text", ["\uff11\uff10\uff2d", "\uff11\uff10", "10\u0661K", "\u0967\u0966G", "1\u00a0000"]
)
def test_parse_size_refuses_non_ascii_digits(text: str) -> None:
    """Full-width, Arabic-Indic and Devanagari digits and odd spaces are not a size."""
    with pytest.raises(InvalidValue, match="not a size"):
        parse_size(text)


def test_parse_duration_refuses_full_width_digits() -> None:
    """A duration takes ASCII digits only."""
    with pytest.raises(InvalidValue, match="not a duration"):
        parse_duration_ms("\uff13\uff10s")


@pytest.mark.parametrize("text", ["9" * 5000, "1" + " " * 40 + "G", "0" * 33])
def test_parse_size_refuses_long_text_naming_the_limit(text: str) -> None:
    """A size text over 32 characters is refused with its length, not parsed."""
    expected = rf"size too long: {len(text)} characters \(at most 32\)"
    with pytest.raises(InvalidValue, match=expected):
        parse_size(text)


def test_a_5000_digit_size_is_refused_fast() -> None:
    """Refusing a 5000-digit size takes well under a millisecond each (no big-int parse)."""
    text = "7" * 5000
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(InvalidValue):
            parse_size(text)
    assert time.perf_counter() - started < 0.5


def test_longest_legal_size_still_parses() -> None:
    """2**62 written out, with a suffix and spaces, fits in the limit."""
    assert parse_size(f"  {2**62} B ") == 2**62
    assert parse_size("0" * 31 + "1") == 1


@pytest.mark.parametrize("bad", [1.5, None, b"10M"])
def test_parse_size_refuses_other_types(bad: object) -> None:
    """Floats, None and bytes are refused as InvalidValue, not TypeError."""
    with pytest.raises(InvalidValue, match="not a size"):
        parse_size(bad)  # type: ignore[arg-type]


@given(st.text(max_size=40) | st.from_regex(r"\A\s*[0-9\uff10-\uff19]{1,60}\s*[KMGkmg]?i?B?\Z"))
def test_parse_size_only_accepts_short_ascii(text: str) -> None:
    """Any text is refused with InvalidValue or is short ASCII that parses within range."""
    try:
        value = parse_size(text)
    except InvalidValue:
        return
    assert text.isascii() and len(text) <= 32 and 0 <= value <= 2**62


@given(st.integers(0, 2**62))
def test_every_byte_count_round_trips(n: int) -> None:
    """A plain number of bytes written in ASCII parses back to itself."""
    assert parse_size(str(n)) == n
