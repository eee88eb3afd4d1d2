"""The keyword-spotting classes: the keywords, ``_unknown_`` (every other label of the data) and ``_silence_``
(background only), in the spirit of the Speech Commands recipe (Warden 2018: 10% silence; its 10% of unknown
words sits beside ten or more keywords, as many clips as one keyword's. With one wake word, 10% would leave
the model one negative clip in eight, and false accepts are what a wake word is judged by: by default every
other word is kept as ``_unknown_``; ``unknown_share`` subsamples them).

``keyword_dataset`` turns a labelled audio data set (any loader's, e.g. FSDD's ten digits) into that task:
every keyword clip is kept; the other words are relabelled ``_unknown_`` (in the training split, with
``unknown_share``, a seeded sample of them: that share of the result, all of them when fewer); ``_silence_`` clips are
cut from the background recordings at random offsets and gains (generated pink noise where none are given,
said in ``Dataset.normalization["keyword_task"]``), ``silence_share`` of each split. The test split keeps every
clip (its unknown words too), so its accuracy counts each word it holds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from compress.core.errors import InputError
from compress.core.registry import nearest
from compress.data.dataset import Dataset
from compress.keywords.streams import rms, synthetic_background

SILENCE, UNKNOWN = "_silence_", "_unknown_"
SILENCE_SHARE = 0.1  # Speech Commands' silence_percentage
SILENCE_GAIN_DB = (-40.0, -10.0)  # the level of a silence clip's background, dB below full scale (uniform)


def keyword_labels(keywords: list[str]) -> list[str]:
    """The task's class list, in the order of the model's outputs."""
    return [SILENCE, UNKNOWN, *keywords]


def _check_keywords(ds: Dataset, keywords: list[str]) -> None:
    if not keywords:
        raise InputError("--keywords: expected at least one keyword (a label of the data)")
    for k in keywords:
        if k not in ds.labels:
            raise InputError(f"--keywords {k!r}: not a label of {ds.name}{nearest(k, ds.labels)}")
    if len(set(keywords)) != len(keywords) or set(keywords) >= set(ds.labels):
        raise InputError(f"--keywords {','.join(keywords)}: expected distinct keywords that leave other words of "
                         f"{ds.name} as _unknown_ (its labels: {', '.join(ds.labels)})")


def _silence(count: int, num_samples: int, background: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """``count`` clips of background at random offsets (of ``background``, looped) and random gains."""
    if count == 0:
        return np.zeros((0, num_samples), np.float32)
    if background is None or not len(background):
        source = synthetic_background("pink", max(num_samples * 8, 80000), rng)
    else:
        source = np.resize(np.asarray(background, np.float32), max(len(background), num_samples))
        source = source / max(rms(source), 1e-12)
    starts = rng.integers(0, len(source) - num_samples + 1, size=count)
    gains = 10 ** (rng.uniform(*SILENCE_GAIN_DB, size=count) / 20)
    clips = np.stack([source[s:s + num_samples] for s in starts]) * gains[:, None]
    return np.clip(clips, -1.0, 1.0).astype(np.float32)


def _split(x: np.ndarray, y: np.ndarray, keyword_index: dict[int, int], *, keep_unknown: float | None,
           silence_share: float, background, rng) -> tuple[np.ndarray, np.ndarray]:
    """One split in the task's classes: keywords, (a share of) the unknown words, silence."""
    is_kw = np.isin(y, list(keyword_index))
    unknown = np.flatnonzero(~is_kw)
    if keep_unknown is not None:  # training: unknown words are keep_unknown of the result
        want = int(round(keep_unknown * is_kw.sum() / max(1e-9, 1 - keep_unknown - silence_share)))
        unknown = np.sort(rng.permutation(unknown)[:min(want, len(unknown))])
    rows = np.sort(np.concatenate([np.flatnonzero(is_kw), unknown]))
    labels = np.asarray([2 + keyword_index[int(v)] if int(v) in keyword_index else 1 for v in y[rows]], np.int64)
    n_silence = int(round(silence_share * len(rows) / max(1e-9, 1 - silence_share)))
    silence = _silence(n_silence, x.shape[1], background, rng)
    return (np.concatenate([x[rows], silence]).astype(np.float32),
            np.concatenate([labels, np.zeros(n_silence, np.int64)]))


def keyword_dataset(ds: Dataset, keywords: list[str], *, seed: int = 0, background: np.ndarray | None = None,
                    silence_share: float = SILENCE_SHARE, unknown_share: float | None = None) -> Dataset:
    """``ds`` (raw audio clips) relabelled for spotting ``keywords``; see the module docstring."""
    if ds.input_kind != "audio":
        raise InputError(f"--task keyword-spotting: {ds.name} holds {ds.input_kind} samples; expected audio clips")
    if ds.y_train is None:
        raise InputError(f"--task keyword-spotting: {ds.name}'s training split is unlabelled; expected labelled clips")
    _check_keywords(ds, keywords)
    share = unknown_share or 0.0
    if not (0 <= silence_share < 1 and 0 <= share < 1 and silence_share + share < 1):
        raise InputError(f"silence_share {silence_share}, unknown_share {unknown_share}: expected shares in [0, 1) "
                         "that leave room for the keywords")
    rng = np.random.default_rng(seed)
    index = {ds.labels.index(k): i for i, k in enumerate(keywords)}
    x_tr, y_tr = _split(ds.x_train, ds.y_train, index, keep_unknown=unknown_share, silence_share=silence_share,
                        background=background, rng=rng)
    x_te, y_te = _split(ds.x_test, ds.y_test, index, keep_unknown=None, silence_share=silence_share,
                        background=background, rng=rng)
    task = {"keywords": list(keywords), "silence_share": silence_share, "unknown_share_train": unknown_share,
            "silence_from": "generated pink noise (no background recordings given)" if background is None
            else "the background recordings", "source_labels": list(ds.labels)}
    return replace(ds, name=f"{ds.name}-kws", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                   labels=keyword_labels(keywords), label_source=f"--keywords over {ds.label_source or ds.name}",
                   normalization={**ds.normalization, "keyword_task": task})


def hold_out(ds: Dataset, share: float, seed: int) -> tuple[Dataset, np.ndarray, list[str]]:
    """(``ds`` without a seeded, per-label ``share`` of its training clips; those clips; their label names):
    the held-out clips build the validation streams the threshold is chosen on, so the test streams never
    choose it and the student never trained on them. Every label with two clips or more gives at least one."""
    if not 0 < share < 1:
        raise InputError(f"--validation-share {share}: expected a share in (0, 1)")
    rng = np.random.default_rng(seed)
    held = []
    for label in range(len(ds.labels)):
        rows = np.flatnonzero(ds.y_train == label)
        if len(rows) >= 2:
            held.append(rng.permutation(rows)[:max(1, int(round(share * len(rows))))])
    held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    if not len(held):
        raise InputError(f"--task keyword-spotting: {ds.name} has too few training clips to hold out validation "
                         "streams; expected two clips or more per label")
    keep = np.setdiff1d(np.arange(len(ds.x_train)), held)
    names = [ds.labels[int(v)] for v in ds.y_train[held]]
    return replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep]), ds.x_train[held], names
