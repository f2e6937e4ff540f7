"""How a config file is described (msgspec Structs) and decoded, every problem at once.

Invariants:
- A file is a Struct of section Structs (`Section`: no unknown key); a key's
  type says how its value is read: `Bytes` and `Millis` through the one parser
  of quota.core.units, `Coin` through quota.core.money, `Address` and `Ports`
  here; plain constraints ride on `msgspec.Meta`, whose description is the
  text of the problem when the constraint fails.
- Decoding never stops at the first problem: each key is decoded on its own,
  and `Problems` gathers one "section.key: what is wrong" per bad key; the
  caller adds its own cross-key rules to the same list and raises once.
- A key that failed keeps its default, so later rules still see typed values.
- An environment override is text, decoded like the key's type (bools from
  true/false/1/0), and wins over the file. Each program reads only its own
  prefix, `QUOTARELAY_<PROGRAM>_<SECTION>_<KEY>` (`Environment`), so a variable
  meant for one program (or for the command line's client settings) is never
  taken by another; the names used are kept for the start log, never the values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import msgspec

from quota.contract.codec import explain
from quota.core.errors import InvalidValue
from quota.core.money import parse_coin
from quota.core.units import parse_duration_ms, parse_size

F = TypeVar("F", bound=msgspec.Struct)


# Bytes, Millis and Coin only tell the decoder how to read a key: the values it
# gives (and the defaults) are plain ints, so they encode and compare as ints.


class Bytes(int):
    """A size in bytes, written "10M", "1Gi" or a plain number."""


class Millis(int):
    """A duration in milliseconds, written "500ms", "30s", "5m" (a number is seconds)."""


class Coin(int):
    """Millicoins, written as coin: "0.1" or a whole number of coins."""


class Address(str):
    """HOST:PORT, checked when decoded."""

    @property
    def host(self) -> str:
        return self.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.rpartition(":")[2])


class Ports(str):
    """FIRST-LAST (or one port), checked when decoded."""

    @property
    def range(self) -> range:
        low, _, high = self.partition("-")
        return range(int(low), int(high or low) + 1)


def size(text: str | int) -> Bytes:
    return cast(Bytes, parse_size(text))


def millis(text: str | int) -> Millis:
    return cast(Millis, parse_duration_ms(text))


def coin(text: str | int) -> Coin:
    return cast(Coin, parse_coin(text))


def _address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidValue(f"expected HOST:PORT, got {text!r}")
    return Address(text)


def _ports(text: str) -> Ports:
    low, sep, high = text.partition("-")
    high = high if sep else low
    if not (low.strip().isdigit() and high.strip().isdigit()):
        raise InvalidValue(f"expected FIRST-LAST ports, got {text!r}")
    if not 1 <= int(low) <= int(high) <= 65535:
        raise InvalidValue(f"ports must satisfy 1 <= first <= last <= 65535, got {text!r}")
    return Ports(f"{int(low)}-{int(high)}")


_READERS: dict[type, tuple[Callable[[Any], Any], type]] = {
    Bytes: (size, int),
    Millis: (millis, int),
    Coin: (coin, object),  # parse_coin names a float or a bool itself
    Address: (_address, str),
    Ports: (_ports, str),
}


def _hook(tp: type, value: Any) -> Any:
    if tp not in _READERS:
        raise NotImplementedError(tp)
    read, kind = _READERS[tp]
    if kind is not object and (not isinstance(value, str | kind) or isinstance(value, bool)):
        wanted = "a string" if kind is str else "a string or a whole number"
        raise ValueError(f"expected {wanted}, got {value!r}")
    try:
        return tp(read(value))  # msgspec checks the type; decode_value unwraps it
    except (InvalidValue, TypeError) as exc:
        raise ValueError(str(exc)) from None


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of a config table: immutable, keyword-only, no unknown key."""


class Problems:
    """Every problem found in one config, each naming its key."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.found.append(f"{key}: {problem}")

    def note(self, text: str) -> None:
        """A problem already worded "key: what" (by msgspec's explainer or the domain)."""
        self.found.append(text)

    def raise_as(self, error: Callable[[str], Exception]) -> None:
        """Raise `error` with all problems ("a.b: ...; c.d: ..."), if there is any."""
        if self.found:
            raise error("; ".join(self.found))


class Environment:
    """The overrides of one program: `QUOTARELAY_<PROGRAM>_<SECTION>_<KEY>`, upper case.

    `used` lists the variable names read (never their values), for the start log;
    `ignored` the variables with the prefix that name no key (a typo, or another
    program's setting), which nothing reads.
    """

    def __init__(self, program: str, env: Mapping[str, str]) -> None:
        self.prefix = f"QUOTARELAY_{program}_".upper()
        self.env = env
        self.used: list[str] = []
        self._asked: set[str] = set()

    def name(self, section: str, key: str) -> str:
        return f"{self.prefix}{section}_{key}".upper()

    def get(self, section: str, key: str) -> str | None:
        name = self.name(section, key)
        self._asked.add(name)
        text = self.env.get(name)
        if text is not None:
            self.used.append(name)
        return text

    def ignored(self) -> tuple[str, ...]:
        """Variables with this prefix that no key asked for (call after decoding)."""
        return tuple(
            sorted(k for k in self.env if k.startswith(self.prefix) and k not in self._asked)
        )


def decode_value(tp: Any, value: Any, key: str, problems: Problems, strict: bool = True) -> Any:
    """`value` decoded as `tp`, or `msgspec.UNSET` after noting the problem under `key`."""
    try:
        decoded = msgspec.convert(value, tp, strict=strict, dec_hook=_hook)
        return int(decoded) if type(decoded) in (Bytes, Millis, Coin) else decoded
    except msgspec.ValidationError as exc:
        problems.note(explain(exc, tp, value, prefix=key, literal=True))
        return msgspec.UNSET


def decode_section(
    cls: type[F],
    raw: Any,
    name: str,
    problems: Problems,
    env: Environment | None = None,
) -> F:
    """Section `name` of a file: every key checked, overrides from `env`."""
    if not isinstance(raw, Mapping):
        problems.add(name, "must be a table")
        raw = {}
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    for key in sorted(set(raw) - set(fields)):
        problems.add(f"{name}.{key}", "unknown key")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        text = env.get(name, key) if env is not None else None
        if text is not None:
            value = decode_value(field.type, text, f"{name}.{key}", problems, strict=False)
        elif key in raw:
            value = decode_value(field.type, raw[key], f"{name}.{key}", problems)
        else:
            continue
        if value is not msgspec.UNSET:
            values[key] = value
    return cls(**values)


def decode_file(
    cls: type[F], raw: Mapping[str, Any], problems: Problems, env: Environment | None = None
) -> F:
    """A whole file: its sections key by key, its arrays of tables whole."""
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    for name in sorted(set(raw) - set(fields)):
        problems.add(name, "unknown section")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if isinstance(field.type, type) and issubclass(field.type, Section):
            values[name] = decode_section(field.type, raw.get(name, {}), name, problems, env)
        elif name in raw:
            value = decode_value(field.type, raw[name], name, problems)
            if value is not msgspec.UNSET:
                values[name] = value
    return cls(**values)
