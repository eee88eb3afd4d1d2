"""Scoring a keyword spotter on labelled streams (``compress.keywords``): hits, misses and false accepts
against hand-counted cases, the Poisson interval against its closed form, the DET curve's monotony, the
threshold choice under a false-accept budget, and seeded streams built from clips and background."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.core.errors import InputError
from compress.export.common.streaming import StreamingContract
from compress.keywords.scoring import (Span, Tally, choose_threshold, det_curve, poisson_interval, score_stream,
                                       summarize)
from compress.keywords.streams import build_stream, synthetic_background

LABELS = ["_silence_", "_unknown_", "yes", "no"]
# 100 hops per second (80-sample hops at 8 kHz), a 0.5 s window: a hit may come up to 0.5 s after its word
RULE = StreamingContract(8000, 80, 4000, LABELS, ["yes", "no"], threshold=0.5, smoothing_hops=1, refractory_hops=0)


def _at(seconds: float) -> int:
    """The hop whose end is at ``seconds``."""
    return int(round(seconds * 100)) - 1


def test_hits_misses_and_false_accepts_are_counted_as_documented():
    spans = [Span(1.0, 2.0, "yes"), Span(5.0, 6.0, "yes"), Span(8.0, 9.0, "no"), Span(11.0, 12.0, "maybe")]
    fired = [(_at(1.5), "yes"), (_at(1.8), "yes"),   # a hit, then a repeat inside the same span: neither counted again
             (_at(2.4), "yes"),                       # within the 0.5 s tolerance after 2.0 but the span is hit: ignored
             (_at(3.0), "yes"),                       # nowhere near a 'yes': a false accept
             (_at(8.5), "yes"),                       # inside a 'no' span: a false accept of 'yes'
             (_at(11.5), "no")]                       # inside a non-keyword word: a false accept of 'no'
    tally = score_stream(fired, spans, 3600.0, RULE)   # the 'yes' at 5-6 s and the 'no' are missed
    assert tally.spans == {"yes": 2, "no": 1} and tally.hits == {"yes": 1, "no": 0}
    assert tally.false_accepts == {"yes": 2, "no": 1}
    assert tally.non_keyword_s == pytest.approx(3600.0 - 3.0)  # the non-keyword word's second counts as background
    s = summarize(tally)
    assert s["keywords"]["yes"]["frr"] == 0.5 and s["keywords"]["no"]["frr"] == 1.0
    assert s["all"]["false_accepts"] == 3 and s["all"]["fa_per_hour"] == pytest.approx(3 / (3597 / 3600))


def test_a_detection_just_past_the_tolerance_is_a_false_accept_and_just_inside_is_a_hit():
    spans = [Span(1.0, 2.0, "yes")]
    assert score_stream([(_at(2.5), "yes")], spans, 10.0, RULE).hits["yes"] == 1
    late = score_stream([(_at(2.51), "yes")], spans, 10.0, RULE)
    assert late.hits["yes"] == 0 and late.false_accepts["yes"] == 1
    assert score_stream([(_at(2.51), "yes")], spans, 10.0, RULE, tolerance_s=1.0).hits["yes"] == 1


def test_the_poisson_interval_is_the_exact_one():
    low, high = poisson_interval(0, 1.0)
    assert low == 0.0 and high == pytest.approx(-math.log(0.025), rel=1e-6)  # no events: upper = -ln(alpha / 2)
    low, high = poisson_interval(10, 5.0)  # Garwood's table: 10 events -> [4.795, 18.39]
    assert (low * 5, high * 5) == pytest.approx((4.7954, 18.3904), abs=1e-3)
    assert math.isnan(poisson_interval(3, 0.0)[0])


def _noisy_stream_probs(seed: int) -> tuple[list[np.ndarray], list[list[Span]], list[float]]:
    """Probabilities a mediocre spotter might give: bumps of varied height on 'yes' spans, and random blips."""
    rng = np.random.default_rng(seed)
    probs, spans = np.zeros((6000, 4)), []
    probs[:, 0] = 1.0
    for k, start in enumerate(range(200, 5800, 400)):
        spans.append(Span(start / 100, start / 100 + 0.8, "yes"))
        probs[start + 40:start + 70, 2] = 0.3 + 0.7 * rng.random()
    probs[rng.choice(6000, 40, replace=False), 2] = rng.random(40)
    return [probs], [spans], [60.0]


def test_the_det_curve_trades_false_rejects_for_false_accepts_as_the_threshold_rises():
    curve = det_curve(*_noisy_stream_probs(0), RULE)
    frr = [r["frr"] for r in curve]
    fa = [r["fa_per_hour"] for r in curve]
    assert all(a <= b + 1e-12 for a, b in zip(frr, frr[1:])) and all(a >= b - 1e-12 for a, b in zip(fa, fa[1:]))
    assert frr[0] < frr[-1] and fa[0] > fa[-1]


def test_the_threshold_is_the_lowest_false_reject_rate_within_the_budget_else_the_closest_said():
    curve = [{"threshold": 0.3, "frr": 0.05, "fa_per_hour": 4.0}, {"threshold": 0.5, "frr": 0.10, "fa_per_hour": 0.9},
             {"threshold": 0.6, "frr": 0.10, "fa_per_hour": 0.5}, {"threshold": 0.8, "frr": 0.30, "fa_per_hour": 0.0}]
    chosen = choose_threshold(curve, 1.0)
    assert chosen["met"] and chosen["threshold"] == 0.6  # equal FRR: the higher threshold, fewer false accepts
    assert choose_threshold(curve, 0.0)["threshold"] == 0.8
    hard = [{"threshold": 0.9, "frr": 0.4, "fa_per_hour": 2.0}, {"threshold": 0.5, "frr": 0.1, "fa_per_hour": 7.0}]
    closest = choose_threshold(hard, 1.0)
    assert not closest["met"] and closest["threshold"] == 0.9


def test_streams_are_seeded_hold_every_clip_once_and_mix_at_the_snr():
    rng = np.random.default_rng(3)
    clips = (0.1 * rng.standard_normal((5, 800))).astype(np.float32)  # peaks below 1: the stream is not rescaled
    labels = ["yes", "no", "yes", "other", "no"]
    a = build_stream(clips, labels, 8000, snr_db=10.0, seed=7)
    b = build_stream(clips, labels, 8000, snr_db=10.0, seed=7)
    c = build_stream(clips, labels, 8000, snr_db=10.0, seed=8)
    assert np.array_equal(a.audio, b.audio) and a.spans == b.spans and not np.array_equal(a.audio, c.audio)
    assert sorted(s.label for s in a.spans) == sorted(labels)
    assert all(x.end_s <= y.start_s for x, y in zip(a.spans, a.spans[1:]))
    assert all(s.end_s - s.start_s == pytest.approx(0.1) for s in a.spans) and a.spans[-1].end_s < a.duration_s
    gaps = np.concatenate([a.audio[:int(a.spans[0].start_s * 8000)], a.audio[int(a.spans[-1].end_s * 8000):]])
    clip_rms = float(np.mean([np.sqrt(np.mean(c.astype(np.float64) ** 2)) for c in clips]))
    assert 20 * np.log10(clip_rms / np.sqrt(np.mean(gaps.astype(np.float64) ** 2))) == pytest.approx(10.0, abs=0.5)
    assert a.background == "pink noise (generated)"
    with pytest.raises(InputError, match="one label per clip"):
        build_stream(clips, labels[:2], 8000, snr_db=10.0, seed=0)


def test_generated_background_has_unit_rms_and_pink_noise_falls_with_frequency():
    rng = np.random.default_rng(0)
    pink = synthetic_background("pink", 80000, rng)
    assert np.sqrt(np.mean(pink.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    power = np.abs(np.fft.rfft(pink)) ** 2
    assert power[100:1000].mean() > 5 * power[10000:20000].mean()
    with pytest.raises(InputError, match="white or pink"):
        synthetic_background("brown", 10, rng)


def test_tallies_add_up_across_streams():
    a = Tally({"yes": 2}, {"yes": 1}, {"yes": 3}, 100.0)
    a.add(Tally({"yes": 1}, {"yes": 1}, {"yes": 0}, 50.0))
    assert (a.spans, a.hits, a.false_accepts, a.non_keyword_s) == ({"yes": 3}, {"yes": 2}, {"yes": 3}, 150.0)


def _audio_dataset(n_per_label: int = 30, labels=("0", "1", "2", "3", "4")):
    from compress.data.dataset import Dataset

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(labels)), n_per_label)
    x = (0.05 * rng.standard_normal((len(y), 800))).astype(np.float32)
    return Dataset("words", "synthetic", x, y, x[::3].copy(), y[::3].copy(), list(labels), {"scale": 1.0},
                   input_kind="audio", label_source="test labels")


def test_the_keyword_task_keeps_every_keyword_and_balances_unknown_words_and_silence():
    from compress.keywords.task import SILENCE_GAIN_DB, keyword_dataset

    ds = _audio_dataset()
    kws = keyword_dataset(ds, ["3", "1"], seed=0)
    assert kws.labels == ["_silence_", "_unknown_", "3", "1"] and kws.num_classes == 4
    counts = np.bincount(kws.y_train, minlength=4)
    assert counts[2] == counts[3] == 30 and counts[1] == 90  # every keyword clip and every other word kept
    assert counts[0] / counts.sum() == pytest.approx(0.1, abs=0.01)
    sampled = np.bincount(keyword_dataset(ds, ["3", "1"], seed=0, unknown_share=0.1).y_train, minlength=4)
    assert sampled[2] == sampled[3] == 30 and sampled[1] / sampled.sum() == pytest.approx(0.1, abs=0.01)
    test_counts = np.bincount(kws.y_test, minlength=4)
    assert test_counts[1] == int((~np.isin(ds.y_test, [1, 3])).sum())  # the test split keeps every unknown word
    silence = kws.x_train[kws.y_train == 0]
    rms_db = 20 * np.log10(np.sqrt(np.mean(silence.astype(np.float64) ** 2, axis=1)))
    assert SILENCE_GAIN_DB[0] - 1 <= rms_db.min() and rms_db.max() <= SILENCE_GAIN_DB[1] + 1
    assert kws.normalization["keyword_task"]["silence_from"].startswith("generated pink noise")
    again = keyword_dataset(ds, ["3", "1"], seed=0)
    assert np.array_equal(again.x_train, kws.x_train) and np.array_equal(again.y_train, kws.y_train)
    assert not np.array_equal(keyword_dataset(ds, ["3", "1"], seed=1).x_train, kws.x_train)


def test_the_keyword_task_refuses_what_it_cannot_spot():
    from compress.keywords.task import keyword_dataset

    ds = _audio_dataset()
    with pytest.raises(InputError, match="did you mean '3'"):
        keyword_dataset(ds, ["33"])
    with pytest.raises(InputError, match="leave other words"):
        keyword_dataset(ds, list(ds.labels))
    with pytest.raises(InputError, match="at least one keyword"):
        keyword_dataset(ds, [])
    from dataclasses import replace

    with pytest.raises(InputError, match="expected audio clips"):
        keyword_dataset(replace(ds, input_kind="features"), ["3"])
