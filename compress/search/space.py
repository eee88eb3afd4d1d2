"""What ``compress search`` may try: student families x width/depth multipliers x quantization schemes
(x optional temperatures and alphas), as a list of candidates ordered cheapest first (by MACs).

A *trial* is one student architecture with one (T, alpha): it is distilled once. Each trial is then
exported in every scheme of the space; every (trial, scheme) pair is a *candidate* with its own
measurements. Families are the registered ones (``compress.models.FAMILIES``); a family that does not fit
the data (a CNN on raw audio) is left out and said so, never silently.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from compress import models
from compress.core.errors import InputError

# The multipliers searched when the user gives none, and the families tried when the user names none, are
# each family's own (``compress.models.scaling.Family.search`` / ``searched_for``); the search starts at the cheap
# end and stops when the time budget is spent.
# Schemes tried when the user names none (those the target supports, in this order).
DEFAULT_SCHEMES = ("none", "int8-weights", "int8")


@dataclass
class SearchSpace:
    """The user's choices (None: the defaults above). ``widths``/``depths``/``frames`` apply to every family
    that takes that multiplier."""

    families: list[str] | None = None
    widths: list[float] | None = None
    depths: list[float] | None = None
    frames: list[float] | None = None  # the streaming families' front-end frame and hop
    schemes: list[str] | None = None
    temperatures: list[float] | None = None
    alphas: list[float] | None = None
    notes: list[str] = field(default_factory=list)  # families left out, and why


@dataclass(frozen=True)
class Trial:
    """One student to distill: architecture name (e.g. ``ds-cnn:0.5:1``), T, alpha, and its size."""

    student: str
    temperature: float
    alpha: float
    macs: int
    params: int
    macs_per_second: float | None = None  # a streaming student's, hop by hop (keyword spotting)

    @property
    def key(self) -> str:
        return f"{self.student} T={self.temperature:g} alpha={self.alpha:g}"

    def candidate_id(self, scheme: str) -> str:
        return f"{self.student} {scheme} T={self.temperature:g} alpha={self.alpha:g}"


def default_families(input_kind: str) -> list[str]:
    """The families a search tries for this kind of data when the user names none (registration order);
    ``keyword-spotting``: the streaming families."""
    kind = input_kind if input_kind in ("image", "audio", "keyword-spotting") else "features"
    return [name for name, family in models.FAMILIES.items() if kind in family.searched_for] or ["mlp"]


def _families(space: SearchSpace, input_kind: str) -> list[tuple[str, tuple[float, ...]]]:
    """(family, fixed leading multipliers) per entry: ``mlp`` searches its whole grid, ``mlp:1.25`` fixes the
    width at 1.25 and searches the depths (a wider member than the defaults, without widening every family)."""
    out = []
    for entry in space.families or default_families(input_kind):
        family = entry.partition(":")[0]
        if family not in models.FAMILIES:
            raise InputError(f"--family {entry!r}: not a student family; expected one of {sorted(models.FAMILIES)}, "
                             "optionally with fixed multipliers (e.g. mlp:1.25)")
        if not models.is_known(entry):
            raise InputError(f"--family {entry!r}: {models.why_unknown(entry)}")
        fixed = tuple(float(v) for v in entry.split(":")[1:])
        out.append((family, fixed))
    return out


def _multipliers(family: str, fixed: tuple[float, ...], space: SearchSpace) -> list[tuple[float, ...]]:
    """Every multiplier tuple of one family entry, in the factory's parameter order (width, depth): the
    fixed ones as given, the others from ``--widths``/``--depths`` or the family's defaults."""
    params = models.family_params(family)  # the multipliers, in order
    defaults = models.FAMILIES[family].search
    given = {"width": space.widths, "depth": space.depths, "frame": space.frames}
    axes = [(fixed[i],) if i < len(fixed) else tuple(given.get(p) or defaults.get(p) or (1.0,))
            for i, p in enumerate(params)]
    for values in axes:
        for v in values:
            if not 0 < v <= models.MULTIPLIER_RANGE[1]:
                raise InputError(f"--widths/--depths/--frames {v:g}: out of range; expected multipliers in "
                                 f"(0, {models.MULTIPLIER_RANGE[1]:g}]")
    return list(itertools.product(*axes))


def _name(family: str, values: tuple[float, ...]) -> str:
    return family + "".join(f":{v:g}" for v in values)


def trials(space: SearchSpace, input_shape: tuple[int, ...], num_classes: int, input_kind: str,
           temperature: float, alpha: float, max_macs_per_second: float | None = None) -> list[Trial]:
    """Every trial of the space, cheapest (fewest MACs) first; duplicates (two multipliers that round to
    the same network) kept once. Families that do not fit the data are recorded in ``space.notes``. For
    keyword spotting each streaming student's MACs per second of audio is counted, and those over
    ``max_macs_per_second`` are left out before any training (a count, not a measurement: it cannot change)."""
    seen: dict[tuple, Trial] = {}
    for family, fixed in _families(space, input_kind):
        for values in _multipliers(family, fixed, space):
            name = _name(family, values)
            try:
                model = models.build(name, input_shape, num_classes)
            except InputError as exc:
                space.notes.append(f"{family}: left out ({exc})")
                break
            macs, params = models.count_macs(model, input_shape), models.count_params(model)
            per_second = models.streaming_macs_per_second(model) if models.is_streamable(name) else None
            shape_key = (family, params, macs)  # multipliers that round to the same network
            for t, a in itertools.product(space.temperatures or [temperature], space.alphas or [alpha]):
                seen.setdefault(shape_key + (t, a), Trial(name, float(t), float(a), macs, params, per_second))
    if not seen:
        raise InputError("search space: no family fits this data; " + "; ".join(space.notes))
    return _within_macs_per_second(sorted(seen.values(), key=lambda tr: (tr.macs_per_second or tr.macs, tr.macs,
                                                                          tr.params, tr.student, tr.temperature,
                                                                          tr.alpha)),
                                   max_macs_per_second, space)


def _within_macs_per_second(plan: list[Trial], budget: float | None, space: SearchSpace) -> list[Trial]:
    """The trials within ``--max-macs-per-second`` (those without the count are kept); the rest said in
    ``space.notes``, or refused when none is left."""
    if budget is None:
        return plan
    kept = [t for t in plan if t.macs_per_second is None or t.macs_per_second <= budget]
    over = sorted({t.student for t in plan} - {t.student for t in kept})
    if not kept:
        cheapest = plan[0]
        raise InputError(f"--max-macs-per-second {budget:g}: every student of the search space costs more (the "
                         f"cheapest, {cheapest.student}, {cheapest.macs_per_second / 1e6:.2f} M MACs per second of "
                         "audio); expected a larger budget or smaller --widths/--depths")
    if over:
        space.notes.append(f"left out over --max-macs-per-second {budget:g}: {', '.join(over)}")
    return kept


def schemes(space: SearchSpace, supported: dict[str, str], target: str) -> list[str]:
    """The schemes to measure: the user's (each must be one the target supports) or the defaults the
    target supports."""
    if space.schemes:
        for s in space.schemes:
            if s not in supported:
                raise InputError(f"--schemes {s!r}: --target {target} does not support it; expected some of "
                                 f"{', '.join(supported)}")
        return list(dict.fromkeys(space.schemes))
    return [s for s in DEFAULT_SCHEMES if s in supported]


@dataclass
class SearchOptions:
    """How the search spends its time. ``time_budget_min``: minutes for this invocation (the first trial
    always runs: a search that measured nothing helps nobody). ``prune_margin``: points below the accuracy
    floor at which a half-trained candidate is stopped."""

    time_budget_min: float = 20.0
    prune_margin: float = 3.0
