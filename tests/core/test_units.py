"""Sizes and durations parse to exact integers with clear errors."""

import pytest

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
