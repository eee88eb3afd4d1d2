"""compress.core.metrics.paired_difference: a gain measured on the same test rows, with its interval."""

from __future__ import annotations

import numpy as np
import pytest

from compress.core.metrics import paired_difference


def test_the_paired_difference_and_its_interval_by_hand():
    before = np.array([True, True, False, False, True] * 100)  # 500 rows
    after = before.copy()
    after[[2, 3, 7, 8, 12, 13, 17, 18, 22, 23, 27, 28]] = True  # 12 fixed, none broken
    d = paired_difference(before, after)
    spread = 1.96 * np.sqrt(12 - 500 * 0.024 ** 2) / 500  # z * sqrt(fixed + broken - n d^2) / n
    assert (d["fixed"], d["broken"], d["rows"], d["points"]) == (12, 0, 500, 2.4)
    assert d["low"] == pytest.approx(100 * (0.024 - spread), abs=0.01) and d["high"] == pytest.approx(100 * (0.024 + spread), abs=0.01)
    assert d["verdict"] == "better" and paired_difference(after, before)["verdict"] == "worse"


def test_a_few_rows_either_way_are_within_noise():
    rng = np.random.default_rng(0)
    before = rng.random(300) < 0.9
    after = before.copy()
    after[np.flatnonzero(~before)[:4]] = True  # 4 fixed
    after[np.flatnonzero(before)[:2]] = False  # 2 broken: +0.67 points on 300 rows
    d = paired_difference(before, after)
    assert d["points"] == pytest.approx(0.67) and d["low"] < 0 < d["high"] and d["verdict"] == "within noise"
    assert paired_difference(before, before)["verdict"] == "within noise"
