"""Ranges and roles declared next to the settings fields, and the one check that reads them.

A settings field says what values make sense where it is declared:

    batch_size: int = bounded(64, low=1)
    c: list[float] = bounded(factory=lambda: [1.0], low=0, low_open=True, min_items=1)

`problems(obj)` (and the flows.yaml loader, before it builds a section) checks every bounded
field of a settings object: a number against its range, each number of a list, a list's length.
NaN and infinities are never in a range. A field whose value is None or a word (`auto`) is not a
number and is not checked here.

A field that says how a run is computed or priced, not what it decides (a batch size, a device, a
price), is declared with `decides=False` (or `runtime(...)`): the config fingerprint leaves it out,
so changing it makes no new version (`deciding(obj)`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

BOUND = "bound"  # the field metadata keys
DECIDES = "decides"


@dataclass(frozen=True)
class Bound:
    """A closed or open range for a number (or for each number of a list), and a list length."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    min_items: int = 0
    also: str = ""  # what else the field takes, as a message says it ("auto", "null")

    def describe(self) -> str:
        """The range in words, as a message states what was expected."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"a number {'<' if self.high_open else '<='} {_num(self.high)}"
        return "a finite number"

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (None: nothing)."""
        if isinstance(value, (list, tuple)):
            if len(value) < self.min_items:
                return f"needs at least {_items(self.min_items)}"
            return next((self._list_problem(v) for v in value if not self.holds(v)), None)
        if _is_number(value) and not self.holds(value):
            other = f" or {self.also}" if self.also else ""
            return f"expected {self.describe()}{other}, got {value!r}"
        return None

    def holds(self, value: Any) -> bool:
        """`value` is a finite number in the range (anything else that is not a number holds)."""
        if not _is_number(value):
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def _list_problem(self, value: Any) -> str:
        return f"every value must be {self.describe()}, got {value!r}"


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    min_items: int = 0,
    also: str = "",
    decides: bool = True,
) -> Any:
    """A dataclass field with a default (or a default factory), its range and its role."""
    meta = {BOUND: Bound(low, high, low_open, high_open, min_items, also), DECIDES: decides}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fraction(default: Any, *, open_low: bool = False, also: str = "") -> Any:
    """A share: a number in [0, 1] (or (0, 1])."""
    return bounded(default, low=0.0, high=1.0, low_open=open_low, also=also)


def runtime(default: Any = dataclasses.MISSING) -> Any:
    """A field that changes how a run is computed or priced, never what it decides."""
    return dataclasses.field(default=default, metadata={DECIDES: False})


def deciding(obj: Any) -> dict[str, Any]:
    """A settings object as plain data, without the fields declared `decides=False` (nested
    settings objects alike): what a config fingerprint hashes."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get(DECIDES, True):
            continue
        out[f.name] = _plain(getattr(obj, f.name))
    return out


def _plain(value: Any) -> Any:
    """A field's value as plain data: settings objects (also inside lists and mappings, such as
    `leaks.against`'s references) by `deciding`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return deciding(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def bound_of(f: dataclasses.Field[Any]) -> Bound | None:
    """The range declared on a dataclass field (None: none)."""
    found = f.metadata.get(BOUND)
    return found if isinstance(found, Bound) else None


def field_problems(cls: type, values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field name, problem) for each value of `values` outside its field's declared range."""
    for f in dataclasses.fields(cls):
        bound = bound_of(f)
        if bound is None or f.name not in values or values[f.name] is None:
            continue
        problem = bound.problem(values[f.name])
        if problem:
            yield f.name, problem


def problems(obj: Any) -> list[tuple[str, str]]:
    """(field name, problem) for each bounded field of a settings object outside its range."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return list(field_problems(type(obj), values))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _items(n: int) -> str:
    return "one value" if n == 1 else f"{n} values"
