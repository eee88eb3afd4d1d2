"""Scoring a keyword spotter's detections on labelled streams: the numbers a product team ships by.

A stream's keyword spans are ``(start_s, end_s, label)``. A detection of keyword ``K`` at time ``t`` (the end of
the hop that fired, ``(hop + 1) * hop_samples / sample_rate``) is a **hit** of the first not yet hit span
labelled ``K`` with ``start_s <= t <= end_s + tolerance_s`` (the window that fires may end up to one window
after the word: ``tolerance_s`` defaults to the window's length); later detections inside a span already hit
are neither hits nor false accepts. Every other detection is a **false accept** (inside another word's span
too). The **false-reject rate** is the share of ``K``'s spans never hit; **false accepts per hour** divide by
the hours of audio that hold no keyword (the stream's length minus the keyword spans), with an exact 95%
Poisson interval on the count, because a rate from a handful of events over a few hours is uncertain and the
report says how uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2

from compress.export.common.streaming import StreamingContract, detections


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    label: str


@dataclass
class Tally:
    """Per keyword: spans, hits, false accepts; and the seconds of non-keyword audio they were scored over."""

    spans: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    false_accepts: dict[str, int] = field(default_factory=dict)
    non_keyword_s: float = 0.0

    def add(self, other: Tally) -> Tally:
        for mine, theirs in ((self.spans, other.spans), (self.hits, other.hits),
                             (self.false_accepts, other.false_accepts)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.non_keyword_s += other.non_keyword_s
        return self


def poisson_interval(count: int, exposure: float, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson rate: ``count`` events over ``exposure`` (hours)."""
    if exposure <= 0:
        return (float("nan"), float("nan"))
    alpha = 1.0 - confidence
    low = 0.0 if count == 0 else chi2.ppf(alpha / 2, 2 * count) / 2
    high = chi2.ppf(1 - alpha / 2, 2 * (count + 1)) / 2
    return float(low / exposure), float(high / exposure)


def score_stream(fired: list[tuple[int, str]], spans: list[Span], duration_s: float, contract: StreamingContract,
                 tolerance_s: float | None = None) -> Tally:
    """Hits and false accepts of ``fired`` (``detections``' ``[(hop, keyword)]``) against a stream's spans."""
    tolerance = contract.window_samples / contract.sample_rate if tolerance_s is None else float(tolerance_s)
    keyword_spans = [s for s in spans if s.label in contract.keywords]
    hit = [False] * len(keyword_spans)
    tally = Tally(spans={k: sum(s.label == k for s in keyword_spans) for k in contract.keywords},
                  hits=dict.fromkeys(contract.keywords, 0), false_accepts=dict.fromkeys(contract.keywords, 0))
    for hop, keyword in fired:
        t = (hop + 1) * contract.hop_samples / contract.sample_rate
        inside = [i for i, s in enumerate(keyword_spans) if s.label == keyword and s.start_s <= t <= s.end_s + tolerance]
        fresh = [i for i in inside if not hit[i]]
        if fresh:
            hit[fresh[0]] = True
            tally.hits[keyword] += 1
        elif not inside:
            tally.false_accepts[keyword] += 1
    tally.non_keyword_s = max(0.0, duration_s - sum(s.end_s - s.start_s for s in keyword_spans))
    return tally


def summarize(tally: Tally) -> dict:
    """Per keyword and over all: false-reject rate (with the spans it rests on) and false accepts per hour
    (with the count, a 95% interval and the hours of non-keyword audio)."""
    hours = tally.non_keyword_s / 3600.0

    def row(spans: int, hits: int, fa: int) -> dict:
        low, high = poisson_interval(fa, hours)
        return {"spans": spans, "hits": hits, "frr": None if spans == 0 else 1.0 - hits / spans,
                "false_accepts": fa, "fa_per_hour": fa / hours if hours > 0 else None,
                "fa_per_hour_95": [low, high], "non_keyword_hours": hours}

    per = {k: row(tally.spans[k], tally.hits[k], tally.false_accepts[k]) for k in tally.spans}
    total = row(sum(tally.spans.values()), sum(tally.hits.values()), sum(tally.false_accepts.values()))
    return {"keywords": per, "all": total}


def det_curve(stream_probs: list[np.ndarray], stream_spans: list[list[Span]], durations: list[float],
              contract: StreamingContract, thresholds: np.ndarray | None = None,
              tolerance_s: float | None = None) -> list[dict]:
    """The DET curve: for each threshold (the contract's rule otherwise unchanged), the false-reject rate and
    false accepts per hour over all streams (``stream_probs``: ``(hops, classes)`` per stream)."""
    thresholds = np.round(np.linspace(0.05, 0.99, 48), 4) if thresholds is None else np.asarray(thresholds)
    rows = []
    for threshold in thresholds:
        rule = StreamingContract(**{**contract.__dict__, "threshold": float(threshold)})
        tally = Tally()
        for probs, spans, duration in zip(stream_probs, stream_spans, durations):
            tally.add(score_stream(detections(probs, rule), spans, duration, rule, tolerance_s))
        rows.append({"threshold": float(threshold), **summarize(tally)["all"]})
    return rows


def choose_threshold(curve: list[dict], max_fa_per_hour: float) -> dict:
    """The lowest-FRR point of ``curve`` (validation streams) within ``max_fa_per_hour`` (the higher threshold
    on a tie); where none is, the point closest to the budget, with ``met: False``."""
    within = [r for r in curve if r["fa_per_hour"] is not None and r["fa_per_hour"] <= max_fa_per_hour]
    if within:
        best = min(within, key=lambda r: (r["frr"], -r["threshold"]))
        return {**best, "met": True}
    closest = min(curve, key=lambda r: (r["fa_per_hour"] if r["fa_per_hour"] is not None else float("inf"),
                                        r["frr"]))
    return {**closest, "met": False}
