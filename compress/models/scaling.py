"""Student families (``compress.models.FAMILIES``): the record one family registers, and how a width or
depth multiplier becomes a unit, channel or layer count and how a family member is named. Shared by
``compress.models`` and ``compress.models.speech`` (which must not import each other's way round), so every family
registers, rounds and names alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Family:
    """Everything about one parametrized student family, in one record (adding a family is one entry).

    factory(input_shape, num_classes, *multipliers) -> nn.Module: a named function whose docstring's first
      line says what the family is; its parameters after the first two are the multipliers that
      ``family:a:b`` passes (all optional, with defaults; at 1.0 it is the registered base model).
    examples: names shown in help and errors (``mobilenet:0.35``).
    search: the multipliers ``compress search`` tries when the user gives none, per parameter name (wide
      enough to reach from "tiny" to the registry's usual student).
    searched_for: the data kinds ("image", "audio", "features") whose default search includes the family.
    streaming: its models convert to a hop-by-hop step with explicit state (``model.streaming_step()``), as
      ``--task keyword-spotting`` needs (``compress.models.streaming``).
    """

    factory: Callable
    examples: tuple[str, ...]
    search: dict[str, tuple[float, ...]] = field(default_factory=dict)
    searched_for: tuple[str, ...] = ()
    streaming: bool = False


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
