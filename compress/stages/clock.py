"""Wall seconds of each stage of a run, beside the estimate the run printed for it.

A user on a laptop or a CI runner plans around the estimate printed before training; the report says how
good it was (``report["run"]["stages"]``: stage, measured seconds, estimate, measured / estimate), so an
estimate that drifts is visible in every run, not only in a benchmark. A stage entered more than once (the
setup before and after loading the data) adds up.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator


class StageClock:
    """Times named stages with ``clock`` (``time.perf_counter``; tests pass their own) and keeps the
    latest estimate given for each (``expect``) before it ran."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._seconds: dict[str, float] = {}
        self._estimates: dict[str, float] = {}

    def expect(self, stage: str, seconds: float) -> None:
        """The estimate just printed for ``stage`` (a later one, made closer to the work, replaces it)."""
        self._estimates[stage] = float(seconds)

    def record(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to ``stage`` (the command's start-up, timed from its first import)."""
        self._seconds[stage] = self._seconds.get(stage, 0.0) + float(seconds)

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Add the block's wall seconds to ``stage`` (also when it raises: an interrupted stage took them)."""
        started = self._clock()
        try:
            yield
        finally:
            self.record(stage, self._clock() - started)

    def rows(self) -> list[dict]:
        """One row per stage in the order first entered: ``seconds``, ``estimate_s`` (None where the run made
        no estimate) and ``measured_over_estimate``."""
        rows = []
        for stage, seconds in self._seconds.items():
            estimate = self._estimates.get(stage)
            ratio = None if not estimate else round(seconds / estimate, 3)
            rows.append({"stage": stage, "seconds": round(seconds, 2),
                         "estimate_s": None if estimate is None else round(estimate, 2),
                         "measured_over_estimate": ratio})
        return rows
