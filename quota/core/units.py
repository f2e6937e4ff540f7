"""Sizes and durations as people write them ("10M", "5m"), parsed to integers.

One parser serves the config files and the command line. Sizes are bytes with
decimal (K, M, G, T = 10**3..10**12) or binary (Ki, Mi, Gi, Ti) suffixes and an
optional trailing "B"; durations are integer milliseconds ("500ms", "30s", "5m",
"2h", "1d"; a bare number means seconds). No float is ever produced.

Only ASCII digits and spaces are accepted (`str.isdigit` and `int()` also take
full-width and other Unicode digits), and a text longer than `MAX_TEXT`
characters is refused before any parsing, so a huge number costs nothing.
"""

import re

from quota.core.errors import InvalidValue

_SIZE_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}
_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# re.ASCII: `\d` and `\s` would otherwise match any Unicode digit or space.
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGT]I?)?B?\s*$", re.IGNORECASE | re.ASCII)
_DURATION_RE = re.compile(r"^\s*([0-9]+)\s*(ms|s|m|h|d)?\s*$", re.ASCII)

MAX_BYTES = 2**62
MAX_TEXT = 32  # characters; "4611686018427387904" (2**62) is 19


def check_length(text: str, what: str) -> None:
    """Refuse a text longer than MAX_TEXT, without echoing all of it."""
    if len(text) > MAX_TEXT:
        raise InvalidValue(
            f"{what} too long: {len(text)} characters (at most {MAX_TEXT}): {text[:16]!r}..."
        )


def parse_size(text: str | int) -> int:
    """Return the number of bytes `text` names ("10M" -> 10_000_000, "1Gi" -> 2**30)."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidValue(f"not a size: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        check_length(text, "size")
        match = _SIZE_RE.match(text)
        if match is None:
            raise InvalidValue(
                f"not a size: {text!r} (write bytes as 1500, 10K, 10M, 1G, 1Gi, ...)"
            )
        value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()]
    if value < 0 or value > MAX_BYTES:
        raise InvalidValue(f"size out of range: {text!r} (0..{MAX_BYTES} bytes)")
    return value


def parse_duration_ms(text: str | int) -> int:
    """Return the milliseconds `text` names ("5m" -> 300_000; a bare 30 is 30 s)."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise InvalidValue(f"not a duration: {text!r}")
    if isinstance(text, int):
        value = text * 1000
    else:
        check_length(text, "duration")
        match = _DURATION_RE.match(text)
        if match is None:
            raise InvalidValue(f"not a duration: {text!r} (write 500ms, 30s, 5m, 2h, 1d)")
        value = int(match.group(1)) * _DURATION_UNITS_MS[match.group(2) or "s"]
    if value < 0:
        raise InvalidValue(f"duration out of range: {text!r}")
    return value


def format_size(nbytes: int) -> str:
    """Render bytes for people, exactly when it is a round decimal size ("10M")."""
    for suffix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{suffix}"
    return str(nbytes)
