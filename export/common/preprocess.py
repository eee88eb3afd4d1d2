"""Preprocessing inside the exported model, so an app feeds the raw 8-bit pixels it has.

Why: without it every app must reproduce ``x = (raw * scale - mean[c]) / std[c]`` in its own language
(Swift, Kotlin, JavaScript) with the exact constants of this run; one wrong constant or channel order is a
silent accuracy loss. With ``ModelInfo.preprocessing`` set, each target exports the student behind its
first ops computing exactly that, and the file records what it takes:

    {"input": "uint8", "layout": "NCHW", "channels": "RGB" | "L" | "any",
     "scale": 1/255, "mean": [one per channel], "std": [one per channel]}

Everything outside a target stays in the normalized space: ``Backend.export`` still receives the torch
student (normalized float32 in) with normalized example/calibration arrays, and a runner's ``predict``
still takes normalized float32. This module is the one place that converts between the two spaces:
``RawPixels`` (the torch wrapper a target converts), ``to_raw`` (normalized -> uint8, the exact inverse of
``normalize`` on real 8-bit images), ``runner_input`` (what a runner feeds a file that records
preprocessing) and ``raw_export_inputs`` (example and calibration for the wrapped model).

This module imports numpy only: runners use it, and a runner must not pull torch into the process whose
memory ``compress.devices.peak_memory`` measures. The torch parts (``RawPixels``, ``Normalize``,
``raw_export_inputs``) live in ``compress.export.common.raw_pixels``, which builds on this module.
"""

from __future__ import annotations

import json

import numpy as np

from compress.core.errors import InputError

CHANNELS = {"RGB": 3, "L": 1, "any": None}
KEY = "preprocessing"  # the metadata key every file records it under


def check(preprocessing: dict, shape: tuple | None = None) -> dict:
    """A validated copy of ``preprocessing`` (floats, lists); ``shape``: the model input (N, C, H, W) it
    must fit. One-line InputError naming the key and what was expected otherwise."""
    p = dict(preprocessing)
    if p.get("input") != "uint8":
        raise InputError(f"preprocessing.input: {p.get('input')!r}; expected 'uint8' (raw 8-bit pixels)")
    if p.get("layout") != "NCHW":
        raise InputError(f"preprocessing.layout: {p.get('layout')!r}; expected 'NCHW'")
    if p.get("channels") not in CHANNELS:
        raise InputError(f"preprocessing.channels: {p.get('channels')!r}; expected one of {', '.join(CHANNELS)}")
    try:
        p["scale"] = float(p["scale"])
        p["mean"] = [float(v) for v in p["mean"]]
        p["std"] = [float(v) for v in p["std"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"preprocessing: {exc}; expected a float 'scale' and float lists 'mean' and 'std'") from None
    if not p["scale"] > 0 or not p["mean"] or len(p["mean"]) != len(p["std"]) or min(p["std"]) <= 0:
        raise InputError(f"preprocessing: scale {p['scale']}, mean {p['mean']}, std {p['std']}; expected scale > 0 "
                         "and one mean and one std > 0 per channel")
    channels = len(p["mean"])
    wanted = CHANNELS[p["channels"]]
    if wanted is not None and channels != wanted:
        raise InputError(f"preprocessing.channels: {p['channels']!r} means {wanted} channel(s), "
                         f"but mean/std have {channels}")
    if shape is not None and (len(shape) != 4 or int(shape[1]) != channels):
        raise InputError(f"preprocessing: the model input has shape {tuple(shape)}; expected (N, {channels}, H, W) "
                         f"(layout NCHW, {channels} channel(s))")
    return p


PREFIX = "model."


def wrapped_name(name: str) -> str:
    """The name of the student's module ``name`` inside ``RawPixels``."""
    return PREFIX + name


def unwrapped_name(name: str | None) -> str | None:
    """The student's own module name for a name inside ``RawPixels`` (unchanged when not inside it)."""
    return name[len(PREFIX):] if name is not None and name.startswith(PREFIX) else name


def normalize(raw: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Raw pixels (N, C, H, W) -> the normalized float32 input the student takes (what ``RawPixels`` computes)."""
    p = check(preprocessing)
    mean = np.asarray(p["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(p["std"], np.float32).reshape(1, -1, 1, 1)
    return ((np.asarray(raw).astype(np.float32) * np.float32(p["scale"]) - mean) / std).astype(np.float32)


RAW_SLACK = 1.0  # pixels: normalized real 8-bit images map back inside 0..255 up to float rounding


def to_raw(x, preprocessing: dict) -> np.ndarray:
    """Normalized inputs (N, C, H, W; numpy or torch) -> the uint8 pixels they came from.

    The exact inverse of ``normalize`` on real 8-bit images: computed in float64, rounded to the nearest
    integer and clipped to 0..255 (a normalized value between two pixel levels goes to the nearest). Values
    that map further than a pixel outside 0..255 are not normalized inputs (float raw pixels 0..255 would
    be clipped to white silently): an ``InputError``."""
    p = check(preprocessing)
    if hasattr(x, "detach"):  # a torch tensor (torch itself is not imported here)
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != len(p["mean"]):
        raise InputError(f"input: shape {x.shape}; expected (N, {len(p['mean'])}, H, W) for raw-pixel preprocessing")
    mean = np.asarray(p["mean"]).reshape(1, -1, 1, 1)
    std = np.asarray(p["std"]).reshape(1, -1, 1, 1)
    raw = (x * std + mean) / p["scale"]
    if raw.size and not (np.isfinite(raw).all() and raw.min() >= -RAW_SLACK and raw.max() <= 255 + RAW_SLACK):
        lo, hi = float(np.nanmin(raw)), float(np.nanmax(raw))
        raise InputError(f"input: float values map to pixels {lo:.4g}..{hi:.4g}, outside 0..255; expected the data's "
                         "normalized values (or uint8 raw pixels as they are; float raw pixels are not taken)")
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def runner_input(x, preprocessing: dict) -> np.ndarray:
    """What a runner feeds a file: uint8 raw pixels as given (what an app passes), normalized float32
    converted with ``to_raw`` when the file records preprocessing, float32 otherwise."""
    if preprocessing and np.asarray(x).dtype == np.uint8:
        return np.ascontiguousarray(x)
    if preprocessing:
        return to_raw(x, preprocessing)
    return np.ascontiguousarray(x, dtype=np.float32)


def from_metadata(metadata: dict) -> dict:
    """The preprocessing a file records (``ModelInfo.metadata()`` form: a JSON string), or {} for none."""
    text = (metadata or {}).get(KEY) or "{}"
    return json.loads(text) if isinstance(text, str) else dict(text)
