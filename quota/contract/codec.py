"""Strict decoding of contract types, with errors that name the offending field.

Invariants:
- Decoding is msgspec's strict mode: no bool or float where an int is due, no
  str where a number is due, no unknown field where a type forbids them.
- Every `msgspec.ValidationError` becomes one sentence "path: problem", the path
  written the way people read it ("items[2].bytes"; `root` for the whole value),
  with the offending value taken from the input, so the text is the same
  whichever entry point decoded it.
- Nothing here knows a message or a config key: it only reads the types.
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from typing import Annotated, Any, Literal, TypeVar

import msgspec

MAX_INT = 2**62
MAX_STR = 8192
MAX_ITEMS = 10_000

T = TypeVar("T")

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
"""An integer 0..2**62: bytes, seconds, millicoins, sequence numbers, times."""
Positive = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
"""An integer 1..2**62: an amount that must move something (a deposit)."""
Signed = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]
"""An integer that may be negative (corrections, ledger amounts)."""
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, msgspec.Meta(max_length=MAX_STR, pattern=NO_NUL)]
"""Text up to 8192 characters without NUL, which PostgreSQL cannot store (SQLite could):
refused alike on both backends, and the OpenAPI document says so."""
Items = Annotated[list[T], msgspec.Meta(max_length=MAX_ITEMS)]

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_NOUNS = {
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a JSON object",
}
_MISSING = object()


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(tp: Any) -> tuple[Any, msgspec.Meta | None]:
    """The type under Annotated and Optional, and its Meta constraints if any."""
    meta = None
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            metas = [m for m in tp.__metadata__ if isinstance(m, msgspec.Meta)]
            meta = metas[0] if metas else meta
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp, meta


def _steps(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _STEP.findall(path)]


def _where(steps: list[str | int], prefix: str, root: str) -> str:
    text = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)
    return prefix + text if prefix else text.lstrip(".") or root


def _locate(cls: Any, data: Any, steps: list[str | int]) -> tuple[Any, Any]:
    """The declared type at `steps` (Annotated kept) and the input value there."""
    tp, value = cls, data
    for step in steps:
        base, _ = _unwrap(tp)
        if isinstance(step, int):
            tp = typing.get_args(base)[0]
        elif isinstance(base, type) and issubclass(base, msgspec.Struct):
            tp = _hints(base).get(step, Any)
        else:
            tp = Any
        try:
            value = value[step]
        except (LookupError, TypeError):
            value = _MISSING
    return tp, value


def _choices(base: Any) -> str:
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return ", ".join(str(m.value) for m in base)
    if typing.get_origin(base) is Literal:
        return ", ".join(map(str, typing.get_args(base)))
    return "?"


def explain(
    exc: msgspec.ValidationError,
    cls: Any,
    data: Any,
    *,
    prefix: str = "",
    root: str = "body",
    literal: bool = False,
) -> str:
    """Rewrite msgspec's error as "path: problem".

    The path starts with `prefix` (or is `root` for the whole value); `literal`
    shows the bad value itself where the wire shows its JSON type.
    """
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    msg, steps = match["msg"], _steps(match["path"] or "")
    tp, value = _locate(cls, data, steps)
    base, meta = _unwrap(tp)
    if found := re.fullmatch(r"Object missing required field `(.+)`", msg):
        return f"{_where([*steps, found[1]], prefix, root)}: missing"
    return f"{_where(steps, prefix, root)}: {_problem(msg, base, meta, value, literal)}"


def _problem(msg: str, base: Any, meta: msgspec.Meta | None, value: Any, literal: bool) -> str:
    if found := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        known = set(_hints(base)) if isinstance(base, type) else set()
        names = sorted(set(value) - known) if isinstance(value, dict) and known else [found[1]]
        return f"unknown field(s) {', '.join(map(repr, names))}"
    if meta is not None and meta.description and msg.startswith("Expected `"):
        secret = bool(meta.extra and meta.extra.get("secret"))
        return meta.description if secret else f"{meta.description}, got {value!r}"
    if meta is not None and meta.pattern == NO_NUL and "matching regex" in msg:
        return "holds a NUL character"
    if found := re.fullmatch(r"Expected `(\w+)` of length <= (\d+)", msg):
        if found[1] == "array":
            return f"too many items ({len(value)} > {found[2]})"
        return f"longer than {found[2]} characters"
    if re.fullmatch(r"Expected `int` [<>]= -?\d+", msg):
        low = meta.ge if meta is not None and meta.ge is not None else 0
        high = "2**62" if meta is None or meta.le == MAX_INT else meta.le
        return f"{value} is out of range ({low}..{high})"
    if msg.startswith("Invalid enum value"):
        return f"{value!r} is not one of {_choices(base)}"
    if found := re.fullmatch(r"Expected `(\w+)(?: \| null)?`, got `\w+`", msg):
        if literal:
            return f"expected {found[1]}, got {value!r}"
        return f"expected {_NOUNS.get(found[1], found[1])}, got {type(value).__name__}"
    return msg
