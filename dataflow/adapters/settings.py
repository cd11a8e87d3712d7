"""One definition per setting: its name, default, parser (with validation) and documentation.

Role: the machinery behind ``dataflow.adapters.config``. A ``Setting`` is the only
place a variable's default is written: the value an empty environment gives, and
the text the README's table shows, both come from it (a test reads every setting
from an empty environment and compares it with its documented default). Its
parser turns the text into a value and refuses what it cannot use, with a reason
(``ValueError``); a ``Reader`` collects every refusal, so that an operator fixes a
deployment in one go.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")


class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the Kafka client configuration only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Derived(Generic[T]):
    """A default that follows another setting (the dialect, the profile, the topics)."""

    #: How the README shows it.
    shown: str
    #: The default, from what it follows.
    of: Callable[[Any], T]


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its default, parser, validation and meaning, defined once."""

    name: str
    #: Text -> value; ``ValueError`` (its message the reason) for anything unusable.
    parse: Callable[[str], T]
    #: The value when the variable is unset or empty (``None``: none).
    default: T | Derived[T] | None
    help: str
    secret: bool = False

    @property
    def documented(self) -> str:
        """The default as the README's table shows it ("" for none)."""
        if isinstance(self.default, Derived):
            return self.default.shown
        return shown(self.default)


def shown(value: object) -> str:
    """A default value as text, the way an operator would write it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


class Reader:
    """Reads settings from an environment, collecting every problem instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def given(self, setting: Setting[Any]) -> bool:
        """Whether the environment sets the variable (to anything but blanks)."""
        return bool(self.env.get(setting.name, "").strip())

    def get(self, setting: Setting[T], basis: object = None) -> T:
        """The setting's value; its default (from ``basis`` if derived) when unset or refused."""
        default = setting.default
        fallback = default.of(basis) if isinstance(default, Derived) else default
        raw = self.env.get(setting.name, "").strip()
        if not raw:
            return fallback  # type: ignore[return-value]
        try:
            return setting.parse(raw)
        except ValueError as error:
            self.problems.append(f"{setting.name}: {error}")
            return fallback  # type: ignore[return-value]


# --------------------------------------------------------------------------- parsers


def text(raw: str) -> str:
    """Any text."""
    return raw


def secret(raw: str) -> Secret:
    """Text that is never shown."""
    return Secret(raw)


def integer(low: int, below: int | None = None) -> Callable[[str], int]:
    """An integer of at least ``low`` (and below ``below``)."""

    def parse(raw: str) -> int:
        value = _number(raw, int)
        if below is not None and value >= below:
            raise ValueError(f"{value} must be below {'2**32' if below == 2**32 else below}")
        return int(_at_least(value, low))

    return parse


def real(low: float, high: float = math.inf) -> Callable[[str], float]:
    """A finite number from ``low`` to ``high`` (``nan`` and ``inf`` are refused)."""

    def parse(raw: str) -> float:
        value = float(_number(raw, float))
        if not math.isfinite(value):
            raise ValueError(f"{raw!r} is not a finite number")
        if value > high:
            raise ValueError(f"{value} must be at most {high:g}")
        return float(_at_least(value, low))

    return parse


def _number(raw: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def _at_least(value: Any, low: float) -> Any:
    if value < low:
        raise ValueError(f"{value} must be at least {low}")
    return value


def flag(raw: str) -> bool:
    """true/false (also 1/0, yes/no, on/off)."""
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{lowered!r} is not a boolean (true/false)")


def choice(options: Callable[[], tuple[str, ...]]) -> Callable[[str], str]:
    """One of ``options()`` (read when parsing: registries may grow)."""

    def parse(raw: str) -> str:
        if raw not in options():
            raise ValueError(f"{raw!r} is not one of {list(options())}")
        return raw

    return parse


def json_as(kind: type[T]) -> Callable[[str], T]:
    """JSON text converted to ``kind`` (msgspec's validation)."""

    def parse(raw: str) -> T:
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise ValueError(f"not valid JSON ({error})") from None
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError as error:
            raise ValueError(str(error)) from None

    return parse


def names(raw: str) -> tuple[str, ...]:
    """Comma-separated names, blanks dropped."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())
