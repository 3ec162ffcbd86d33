"""Conditions read from the node itself rather than from a log line, registered by being here:
every module of this package but base.py defines CONDITION, and the daemon watches and looks at
each (adding a non-log detector is adding a module)."""

from __future__ import annotations

import importlib
import pkgutil

from nodemedic.detector.conditions.base import Finding, NodeView, PathCondition, Tidy, UnitCondition
from nodemedic.detector.conditions.units import unit_condition, unit_recovered

__all__ = ["Finding", "NodeView", "PathCondition", "Tidy", "UnitCondition", "registered", "unit_condition",
           "unit_recovered"]


def registered() -> tuple[list[PathCondition], list[UnitCondition]]:
    """Every condition of this package, path and unit ones apart, in module name order."""
    paths: list[PathCondition] = []
    units: list[UnitCondition] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module == "base":
            continue
        condition = importlib.import_module(f"{__name__}.{module}").CONDITION
        if isinstance(condition, PathCondition):
            paths.append(condition)
        elif isinstance(condition, UnitCondition):
            units.append(condition)
        else:
            raise TypeError(f"{__name__}.{module}.CONDITION is neither a PathCondition nor a UnitCondition")
    names = [c.name for c in (*paths, *units)]
    if len(names) != len(set(names)):
        raise ValueError(f"two conditions share a name: {sorted(names)}")
    return paths, units
