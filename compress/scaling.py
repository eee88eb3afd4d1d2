"""Width/depth multipliers for the student families (``compress.models.FAMILIES``): how a multiplier becomes
a unit, channel or layer count, and how a family member is named. Shared by ``compress.models`` and
``compress.speech`` (which must not import each other's way round), so every family rounds and names alike."""

from __future__ import annotations


def scaled(base: int, multiplier: float, minimum: int) -> int:
    """``base * multiplier`` rounded half up (Python's ``round`` sends 2.5 to 2 but 3.5 to 4), at least
    ``minimum``."""
    return max(minimum, int(base * multiplier + 0.5))  # multipliers are > 0 (compress.models.MULTIPLIER_RANGE)


def member_name(family: str, *multipliers: float) -> str:
    """A family member's name as written, trailing default (1.0) multipliers left out: ``mobilenet:0.5``,
    so shape errors name the model the user asked for."""
    args = list(multipliers)
    while args and args[-1] == 1.0:
        args.pop()
    return family + "".join(f":{a:g}" for a in args)
