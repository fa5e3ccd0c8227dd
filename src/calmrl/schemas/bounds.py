"""Ranges written next to a schema's fields, checked by one function.

    lr: float = bounded(1e-6, gt=0)
    gamma: float = bounded(1.0, ge=0, le=1)
    random_repeat: int | None = bounded(10, ge=1)      # None passes: "off"

`check_bounds(cfg.algo, "algo")` reads the dataclass a composed node was built from (Hydra keeps it as the
node's type) and raises one ConfigError naming the first field out of range: `algo.gamma must be in [0, 1],
got 1.5`. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calmrl.errors import require


@dataclass(frozen=True)
class Bounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    hint: str = ""  # said after the range, e.g. "(verl uses 3.0)"

    def holds(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        low, high = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        top, close = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low is not None and top is not None:
            text = f"in {high}{_num(low)}, {_num(top)}{close}"
        elif low is not None:
            text = f"{'>=' if self.ge is not None else '>'} {_num(low)}"
        else:
            text = f"{'<=' if self.le is not None else '<'} {_num(top)}"
        return f"{text} {self.hint}".rstrip()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    hint: str = "",
) -> Any:
    """A dataclass field whose value must lie in the given range (None, for an optional field, always passes)."""
    if ge is None and gt is None and le is None and lt is None:
        raise ValueError("bounded() needs at least one of ge, gt, le, lt")
    return field(default=default, metadata={"bounds": Bounds(ge, gt, le, lt, hint)})


def field_bounds(schema: type) -> dict[str, Bounds]:
    """Every bounded field of a schema dataclass (its bases' included), by name."""
    return {f.name: f.metadata["bounds"] for f in dataclasses.fields(schema) if "bounds" in f.metadata}


def check_bounds(node: DictConfig, where: str) -> None:
    """ConfigError for the first field of `node` outside the range its schema gives it."""
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return
    for name, bounds in field_bounds(schema).items():
        value = node.get(name)
        if value is None:
            continue
        optional = " or null" if _is_optional(schema, name) else ""
        key = f"{where}.{name}" if where else name  # where="": a command's top-level keys
        require(bounds.holds(value), f"{key} must be {bounds}{optional}, got {value}")


def _is_optional(schema: type, name: str) -> bool:
    hint = next(f.type for f in dataclasses.fields(schema) if f.name == name)
    return "None" in str(hint)
