"""Hydra override syntax -> Optuna distributions.

`interval(a, b)` is a float range (`tag(log, interval(a, b))` samples it on a log scale),
`range(a, b[, step])` an integer range (end exclusive, as in Hydra), `choice(...)` or `a,b,c` a
categorical; anything else is a fixed override passed to every trial unchanged.
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (`override.is_sweep_override()`)."""
    value = override.value()
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int) and not log:
            return IntDistribution(value.start, value.end)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    if isinstance(value, RangeSweep):
        step = value.step if value.step is not None else 1
        if all(isinstance(x, int) for x in (value.start, value.stop, step)):
            return IntDistribution(value.start, value.stop - step, step=step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    raise ValueError(f"sweep override {override.input_line!r}: Optuna cannot search {type(value).__name__}")


def split_overrides(
    arguments: list[str], params: dict[str, str]
) -> tuple[list[str], dict[str, BaseDistribution]]:
    """(fixed overrides, search space) from the command line and the sweeper's `params`.

    A key given on the command line wins over the same key in `params`.
    """
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    fixed: dict[str, str] = {}
    space: dict[str, BaseDistribution] = {}
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        fixed.pop(key, None)
        space.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return list(fixed.values()), space
