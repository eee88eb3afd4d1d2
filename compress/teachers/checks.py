"""Checks on the members before anything is distilled from them: they agree on the class count and give
finite outputs on real samples (``check_members``), and none was fed inputs it was not trained on
(``contract_warnings``: near chance, far below the others, below a linear baseline, or below the
accuracy it declares)."""

from __future__ import annotations

import json

import numpy as np

from compress.core.errors import InputError
from compress.teachers.member import Teacher, first_reason
from compress.teachers.precomputed import MissingOutputs


def check_members(members: list[Teacher], sample: np.ndarray, num_classes: int) -> None:
    """Members must agree on the class count (with each other and the data) and give finite logits."""
    seen: tuple[str, int] | None = None
    for m in members:
        declared = m.input_shape
        data_shape = tuple(m.own_input(sample).shape[1:])
        if declared is not None and (len(declared) != len(data_shape)
                                     or any(d is not None and d != s for d, s in zip(declared, data_shape))):
            shown = tuple("?" if d is None else d for d in declared)
            fed = "the data's samples have" if m.view is None else "its input contract gives"
            raise InputError(f"teacher {m.name!r}: takes samples of shape {shown} but {fed} shape {data_shape}; "
                             "expected a teacher for this data's input shape, or declare its input contract "
                             "(--teacher 'SPEC?shape=...&size=...', README)")
        try:
            out = m.logits(sample)
        except MissingOutputs:  # outputs computed elsewhere without the test split: checked at load
            continue
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"teacher {m.name!r}: fails on the data's samples of shape {data_shape} ({first_reason(exc)}); "
                             f"expected a model that takes (batch, {', '.join(map(str, data_shape))}) float32 inputs") from None
        if out.ndim != 2:
            raise InputError(f"teacher {m.name!r}: outputs shape {tuple(out.shape)}; expected (batch, classes)")
        if not np.isfinite(out).all():
            raise InputError(f"teacher {m.name!r}: outputs NaN or infinity on real inputs; expected finite logits")
        if seen is not None and out.shape[1] != seen[1]:
            raise InputError(
                f"teachers {seen[0]!r} and {m.name!r} disagree on the number of classes ({seen[1]} vs {out.shape[1]}); "
                "expected every member to predict the same classes"
            )
        seen = (m.name, out.shape[1])
    if seen is not None and seen[1] != num_classes:
        raise InputError(f"teacher {seen[0]!r}: predicts {seen[1]} classes but the data has {num_classes} labels; "
                         f"expected {num_classes} outputs, one per label")


FAR_BELOW_POINTS = 10.0  # a member this far below the best one was probably fed the wrong inputs
DECLARED_MISS_POINTS = 2.0  # a member this far below the accuracy it declares: its contract is wrong


def _linear_baseline(data, limit: int = 4000) -> float | None:
    """Test accuracy of a logistic regression trained here in seconds on (a slice of) the training split:
    a pretrained member that scores below it was almost certainly fed inputs it was not trained on."""
    from sklearn.linear_model import LogisticRegression

    if data.y_train is None or len(np.unique(data.y_train[:limit])) < 2:
        return None
    x = data.x_train[:limit].reshape(min(limit, len(data.x_train)), -1)
    model = LogisticRegression(max_iter=300).fit(x, data.y_train[:limit])
    return float(model.score(data.x_test.reshape(len(data.x_test), -1), data.y_test))


def contract_warnings(members: list[Teacher], data, strict: bool = False) -> list[str]:
    """Catch a wrong input contract before distilling from it: a member near chance, far below the best
    member, or (pretrained members) below a linear baseline is a warning naming the contract used (an
    InputError with ``strict``); a member far below the accuracy it declares is always an InputError."""
    if data.y_test is None or not len(data.y_test):
        return []
    scores = {}
    for m in members:
        try:
            scores[m.name] = float(np.mean(np.argmax(m.logits(data.x_test), axis=1) == data.y_test))
        except InputError:  # outputs computed elsewhere for the transfer set only
            continue
    if not scores:
        return []
    best, chance = max(scores.values()), 1.0 / data.num_classes
    pretrained = any(m.kind != "builtin" for m in members if m.name in scores)
    baseline = _linear_baseline(data) if pretrained else None
    warnings = []
    for m in (m for m in members if m.name in scores):
        acc, used = scores[m.name], json.dumps(m.contract.describe())
        if m.contract.accuracy is not None and 100 * acc < m.contract.accuracy - DECLARED_MISS_POINTS:
            raise InputError(f"teacher {m.name!r}: {100 * acc:.2f}% on the test split, but it declares "
                             f"{m.contract.accuracy:g}%; check its input contract (used: {used})")
        why = ("near chance" if acc < chance + 0.5 * (1 - chance) * 0.2 else
               f"{100 * (best - acc):.1f} points below the best member" if 100 * (best - acc) > FAR_BELOW_POINTS else
               f"below a linear model trained here ({100 * baseline:.1f}%)" if (
                   baseline is not None and m.kind != "builtin" and acc < baseline - 0.02) else None)
        if why:
            message = (f"teacher {m.name!r}: {100 * acc:.2f}% on the test split ({why}); check its input contract "
                       f"(used: {used})")
            if strict:
                raise InputError(message + "; failing because of --strict")
            warnings.append(message)
    return warnings
