"""Pareto fronts over measured candidates: which points no other point beats on every objective.

Used by ``compress search`` (the chosen student must lie on the front of everything it measured) and by its
report's plots. Objectives are ``(key, "max" | "min")``; a point missing a value for any objective is left
out of the front (it was not measured, so it cannot be compared).
"""

from __future__ import annotations

from typing import Iterable, Sequence

Objective = tuple[str, str]  # (key, "max" or "min")


def _signed(point: dict, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The point's values turned so that larger is better everywhere; None when one is missing."""
    values = []
    for key, sense in objectives:
        value = point.get(key)
        if value is None:
            return None
        values.append(float(value) if sense == "max" else -float(value))
    return tuple(values)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def on_front(points: Iterable[dict], objectives: Sequence[Objective]) -> list[bool]:
    """One flag per point: True where no other point dominates it on ``objectives``."""
    points = list(points)
    signed = [_signed(p, objectives) for p in points]
    return [s is not None and not any(o is not None and dominates(o, s) for o in signed) for s in signed]
