"""The one registration idiom for every kind of named thing: export targets, distillation losses,
optimizers, data loaders, teacher formats, student models and student families.

A ``Registry`` is a dict (name -> entry) that knows what it holds and which flag names it, so adding one
is one line wherever the thing is defined (``LOSSES.register("hinton", hinton_loss)``, or
``@OPTIMIZERS.register("adam")`` on a function), and asking for an unknown name is the same one-line error
everywhere (``--loss 'hintn': unknown; did you mean 'hinton'?``). As torchdistill's
``register``/``get``: a recipe's string maps to the registered object, never to code named by the user.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

from compress.core.errors import InputError

_NOTHING = object()


def nearest(word: str, choices, cutoff: float = 0.5) -> str:
    """The tail of an "unknown name" error: ``; did you mean 'x'?`` for the closest of ``choices``, else
    ``; expected one of [...]`` -- the one wording for registries, recipe keys and target options."""
    near = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {near[0]!r}?" if near else f"; expected one of {sorted(choices)}"


class Registry(dict):
    """name -> entry for one kind (``kind``: what an entry is, for messages; ``flag``: how a user names one)."""

    def __init__(self, kind: str, flag: str, entries: dict | Iterable[tuple[str, Any]] = ()):
        super().__init__(entries)
        self.kind, self.flag = kind, flag

    def register(self, name: str, entry: Any = _NOTHING) -> Any:
        """Add (or replace) ``name``; returns ``entry``. Without ``entry``, a decorator that registers what it
        decorates under ``name``."""
        if entry is _NOTHING:
            def decorate(thing: Callable) -> Callable:
                self[name] = thing
                return thing

            return decorate
        self[name] = entry
        return entry

    def unknown(self, name: str) -> str:
        """Why ``name`` is refused, without the flag: the nearest registered name or the whole list."""
        return "unknown" + nearest(name, self, cutoff=0.6)

    def lookup(self, name: str, flag: str | None = None) -> Any:
        """The entry called ``name``; an InputError naming ``flag`` (default: the registry's) otherwise."""
        if name not in self:
            raise InputError(f"{flag or self.flag} {name!r}: {self.unknown(name)}")
        return self[name]
