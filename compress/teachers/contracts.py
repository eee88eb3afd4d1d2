"""What each teacher member was trained on: its input contract, separate from the student's (the app's).

A user's pretrained members come with their own preprocessing (``pixels / 16``, a flattened layout, NHWC,
another image size, features instead of raw audio). Feeding every member the student's standardization
damages its soft targets silently, so each member declares how it sees a sample, and the soft targets are
computed from each member's own view of the same samples.

A contract is a small table (recipe: ``[teachers.contract."<member spec>"]``; CLI: ``--teacher
'SPEC?key=value&key=value'``; read automatically from this tool's own output folders given as a teacher
and from ONNX ``metadata_props``). Keys, applied in this order to the data's raw values
(``raw = x * std / scale + mean / scale`` undoes the data's own normalization):

  scale, mean, std   the member's value transform ``(raw * scale - mean) / std``; mean/std a number or
                     one per channel (``0.5,0.5,0.5``). When none is given the member gets the data's own
                     normalization; when any is given the others default to 1, 0 and 1.
  layout             ``nchw`` (default) or ``nhwc``: the channel axis of image samples
  channels           ``rgb`` (default) or ``bgr``
  size               ``HxW`` (or one number): resize images (bilinear) to the member's size
  shape              the member's per-sample shape (``64``, ``1,8,8``): a reshape, the element count must match
  dtype              ``float32`` (default), ``float16``, ``float64``
  sample_rate        audio: the member's rate in Hz (the clips are resampled)
  input              audio: ``pcm`` (default) or ``features`` (the log-mel features of ``compress.models.frontend``)
  output             ``logits`` (default), ``probs`` or ``label`` (a label-only, black-box member)
  accuracy           the test-split accuracy the member is known to reach, in percent: a large miss is an
                     error (the contract is probably wrong), not a warning
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

from compress.core.errors import InputError
from compress.models.frontend import LogMel

KEYS = ("scale", "mean", "std", "layout", "channels", "size", "shape", "dtype", "sample_rate", "input", "output",
        "accuracy")
CHOICES = {"layout": ("nchw", "nhwc"), "channels": ("rgb", "bgr"), "dtype": ("float32", "float16", "float64"),
           "input": ("pcm", "features"), "output": ("logits", "probs", "label")}


@dataclass(frozen=True)
class Contract:
    """One member's input contract (see the module docstring); the defaults mean "as the data is"."""

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "nchw"
    channels: str = "rgb"
    size: tuple[int, int] | None = None
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"
    sample_rate: int | None = None
    input: str = "pcm"
    output: str = "logits"
    accuracy: float | None = None
    source: str = field(default="default", compare=False)

    @property
    def is_default(self) -> bool:
        return self == Contract()

    def describe(self) -> dict:
        """The contract as recorded in the manifest and report (only what differs from the data's view)."""
        d = {k: v for k, v in asdict(self).items() if k != "source" and v != getattr(Contract(), k)}
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "source": self.source}

    def key(self) -> str:
        """What changes the member's outputs (part of its fingerprint, so caches invalidate)."""
        return json.dumps({k: v for k, v in self.describe().items() if k not in ("source", "accuracy")},
                          sort_keys=True)


MAX_SIDE = 8192  # the largest image side a member's contract may resize to (a typo must not allocate 10+ GB)
ACCURACY = (0.0, 100.0)


def _number(member: str, key: str, text) -> float:
    if isinstance(text, bool):  # TOML ``scale = true`` is not a number
        raise InputError(f"teacher {member!r}: contract {key} {text!r}; expected a number (e.g. 0.0625 or 1/16)")
    try:
        value = float(Fraction(str(text).strip())) if "/" in str(text) else float(text)
    except (ValueError, ZeroDivisionError, TypeError):
        raise InputError(f"teacher {member!r}: contract {key} {text!r}; expected a number (e.g. 0.0625 or 1/16)") from None
    if not np.isfinite(value):
        raise InputError(f"teacher {member!r}: contract {key} {text!r}; expected a finite number")
    return value


def _numbers(member: str, key: str, value) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(_number(member, key, v) for v in items)


def _ints(member: str, key: str, value, sep: str = ",") -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).replace("x", sep).split(sep)
    try:  # 1.5 or true is not an integer, even where int() would take it
        if any(isinstance(v, (bool, float)) for v in items):
            raise ValueError
        out = tuple(int(v) for v in items)
    except (ValueError, TypeError):
        raise InputError(f"teacher {member!r}: contract {key} {value!r}; expected integers (e.g. 1,8,8)") from None
    if not out or any(v < 1 for v in out):
        raise InputError(f"teacher {member!r}: contract {key} {value!r}; expected positive integers")
    return out


def _rate(member: str, value) -> int:
    rate = _number(member, "sample_rate", value)
    if not rate.is_integer() or rate < 1:
        raise InputError(f"teacher {member!r}: contract sample_rate {value!r}; expected a rate in Hz, an integer >= 1")
    return int(rate)


def _checked(member: str, contract: "Contract") -> "Contract":
    """Ranges that would otherwise surface late or as a huge allocation: sizes, rates, stds, accuracy."""
    if contract.size is not None and max(contract.size) > MAX_SIDE:
        raise InputError(f"teacher {member!r}: contract size {'x'.join(map(str, contract.size))}; expected at most "
                         f"{MAX_SIDE} pixels a side")
    if contract.sample_rate is not None and contract.sample_rate < 1:
        raise InputError(f"teacher {member!r}: contract sample_rate {contract.sample_rate}; expected a rate in Hz >= 1")
    if contract.std is not None and any(v == 0 for v in contract.std):
        raise InputError(f"teacher {member!r}: contract std {','.join(map(str, contract.std))}; expected non-zero values")
    if contract.accuracy is not None and not ACCURACY[0] <= contract.accuracy <= ACCURACY[1]:
        raise InputError(f"teacher {member!r}: contract accuracy {contract.accuracy:g}; expected a test accuracy "
                         "in percent, in [0, 100]")
    return contract


def make_contract(member: str, table: dict | None, source: str) -> Contract:
    """A ``Contract`` from a table of key -> value (strings from the CLI, TOML values from a recipe).
    An unknown key or a bad value is an InputError naming the member and the nearest key."""
    if table is not None and not isinstance(table, dict):
        raise InputError(f"teacher {member!r}: contract {table!r}; expected a table of key = value "
                         "(e.g. [teachers.contract.\"m.onnx\"] scale = \"1/16\")")
    table = dict(table or {})
    for key in table:
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            raise InputError(f"teacher {member!r}: unknown contract key {key!r}"
                             + (f"; did you mean {near[0]!r}?" if near else f"; expected one of {', '.join(KEYS)}"))
    for key, allowed in CHOICES.items():
        if key in table and str(table[key]).lower() not in allowed:
            raise InputError(f"teacher {member!r}: contract {key} {table[key]!r}; expected one of {', '.join(allowed)}")
    value_keys = {"scale", "mean", "std"} & set(table)
    size = _ints(member, "size", table["size"], "x") if "size" in table else None
    if size is not None and len(size) == 1:
        size = (size[0], size[0])
    return _checked(member, Contract(
        scale=_number(member, "scale", table["scale"]) if "scale" in table else (1.0 if value_keys else None),
        mean=_numbers(member, "mean", table["mean"]) if "mean" in table else ((0.0,) if value_keys else None),
        std=_numbers(member, "std", table["std"]) if "std" in table else ((1.0,) if value_keys else None),
        layout=str(table.get("layout", "nchw")).lower(), channels=str(table.get("channels", "rgb")).lower(),
        size=size, shape=_ints(member, "shape", table["shape"]) if "shape" in table else None,
        dtype=str(table.get("dtype", "float32")).lower(),
        sample_rate=_rate(member, table["sample_rate"]) if "sample_rate" in table else None,
        input=str(table.get("input", "pcm")).lower(), output=str(table.get("output", "logits")).lower(),
        accuracy=_number(member, "accuracy", table["accuracy"]) if "accuracy" in table else None,
        source=source))


def split_spec(spec: str) -> tuple[str, dict]:
    """``'model.onnx?scale=1/16&shape=64'`` -> (``'model.onnx'``, {"scale": "1/16", "shape": "64"}).
    A spec naming an existing file or folder is that file, even with ``?`` in its name (``a?b.onnx``); a
    contract is appended after it as usual (``a?b.onnx?scale=1/16``)."""
    if os.path.exists(spec):
        return spec, {}
    base, sep, query = spec.rpartition("?")
    if not sep:
        return spec, {}
    table = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise InputError(f"teacher {spec!r}: contract item {part!r}; expected key=value (e.g. scale=1/16)")
        table[key.strip()] = value.strip()
    return base, table


def _per_channel(member: str, key: str, values: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """A scalar, or one value per channel (axis 1 of image samples), shaped to broadcast over ``x``."""
    if len(values) == 1:
        return np.float64(values[0])
    channels = x.shape[1] if x.ndim >= 3 else None
    if channels != len(values):
        raise InputError(f"teacher {member!r}: contract {key} has {len(values)} values but the samples have "
                         f"{channels or 'no'} channels; expected one value or one per channel")
    return np.asarray(values, dtype=np.float64).reshape(1, -1, *([1] * (x.ndim - 2)))


def raw_values(x: np.ndarray, normalization: dict) -> np.ndarray:
    """Undo the data's own normalization ``x = (raw * scale - mean) / std``: the values the data set holds."""
    scale = float(normalization.get("scale", 1.0) or 1.0)
    mean, std = normalization.get("mean", 0.0), normalization.get("std", 1.0)
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, *([1] * (x.ndim - 2))) if np.ndim(mean) else float(mean)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, *([1] * (x.ndim - 2))) if np.ndim(std) else float(std)
    return (x.astype(np.float64) * std + mean) / scale


def _resize(x: np.ndarray, size: tuple[int, int], member: str) -> np.ndarray:
    import torch

    if x.ndim != 4:
        raise InputError(f"teacher {member!r}: contract size {size} needs image samples (channels, height, width), "
                         f"but the samples have shape {tuple(x.shape[1:])}")
    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=size, mode="bilinear",
                                        align_corners=False, antialias=True)
    return t.numpy()


def _audio(x: np.ndarray, contract: Contract, normalization: dict, member: str) -> np.ndarray:
    if contract.sample_rate is not None:
        from scipy.signal import resample_poly

        rate = int(normalization.get("sample_rate") or contract.sample_rate)
        if rate != contract.sample_rate:
            ratio = Fraction(contract.sample_rate, rate)
            x = resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    if contract.input == "features":
        import torch


        front = LogMel(sample_rate=contract.sample_rate or int(normalization.get("sample_rate") or 8000))
        with torch.no_grad():
            x = front(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)).numpy()
    return x


def _check_elements(member: str, contract: Contract, resized: tuple[int, ...]) -> None:
    """The contract's shape against the resized samples' element count, before the resize allocates them."""
    if contract.shape is not None and int(np.prod(resized)) != int(np.prod(contract.shape)):
        raise InputError(f"teacher {member!r}: contract shape {','.join(map(str, contract.shape))} has "
                         f"{int(np.prod(contract.shape))} elements but size {'x'.join(map(str, contract.size))} gives "
                         f"{int(np.prod(resized))} {resized}; expected a shape with the same number of elements")


def member_view(contract: Contract, x: np.ndarray, normalization: dict, input_kind: str, member: str) -> np.ndarray:
    """The member's own view of the data's samples ``x`` (normalized as the student sees them)."""
    if contract.key() == Contract().key():
        return x
    v = x
    if contract.scale is not None:
        raw = raw_values(x, normalization)
        v = (raw * contract.scale - _per_channel(member, "mean", contract.mean, raw)) / _per_channel(
            member, "std", contract.std, raw)
    if input_kind == "audio":
        v = _audio(v, contract, normalization, member)
    if contract.size is not None:
        _check_elements(member, contract, (v.shape[1] if v.ndim == 4 else 1, *contract.size))
        v = _resize(np.asarray(v, dtype=np.float32), contract.size, member)
    if contract.channels == "bgr":
        if v.ndim != 4:
            raise InputError(f"teacher {member!r}: contract channels 'bgr' needs image samples with channels")
        v = v[:, ::-1]
    if contract.layout == "nhwc":
        if v.ndim != 4:
            raise InputError(f"teacher {member!r}: contract layout 'nhwc' needs image samples (channels, height, "
                             f"width), but the samples have shape {tuple(v.shape[1:])}")
        v = v.transpose(0, 2, 3, 1)
    if contract.shape is not None:
        have, want = int(np.prod(v.shape[1:])), int(np.prod(contract.shape))
        if have != want:
            raise InputError(f"teacher {member!r}: contract shape {','.join(map(str, contract.shape))} has {want} "
                             f"elements but the samples have {have} {tuple(v.shape[1:])}; expected a shape with the "
                             "same number of elements")
        v = v.reshape(len(v), *contract.shape)
    return np.ascontiguousarray(v, dtype=np.dtype(contract.dtype))
