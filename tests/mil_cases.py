"""Shared by the MIL evaluator tests: convert a torch module (or save a MIL Builder program) with coremltools,
run the saved package in the numpy reference evaluator, and compare with torch on real inputs.

Bounds are relative to the reference's scale: max |got - want| <= bound * max(1, max |want|), the schema of
``compress.export.coreml.tolerances.MAX_REL``. ``OP_REL`` are the op-level bounds: fp32 is the same arithmetic
in another summation order; fp16 rounds the input and every op output to float16 (relative step 4.9e-4).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

OP_REL = {"fp32": 1e-5, "fp16": 5e-3}


def digits(n: int = 4) -> np.ndarray:
    """(n, 8, 8) real sklearn digits, normalized to roughly zero mean and unit spread."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n].astype(np.float32) / 16.0
    return (images - 0.3) / 0.45


def digit_images(n: int, channels: int, size: int) -> np.ndarray:
    """(n, channels, size, size) float32: real digits (a different digit per channel) resized bilinearly."""
    import torch
    import torch.nn.functional as Fn

    x = torch.from_numpy(digits(n * channels).reshape(n, channels, 8, 8))
    if size != 8:
        x = Fn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32)


def digit_sequences(n: int, steps: int, features: int) -> np.ndarray:
    """(n, steps, features) float32: real digit pixels read row by row as a sequence (resized to fit)."""
    import torch
    import torch.nn.functional as Fn

    x = torch.from_numpy(digits(n)[:, None])
    x = Fn.interpolate(x, size=(steps, features), mode="bilinear", align_corners=False)[:, 0]
    return x.numpy().astype(np.float32)


def convert_torch(module, examples, path: Path, *, target: str = "iOS18", precision: str = "fp32",
                  names: list[str] | None = None) -> Path:
    """Trace ``module`` on ``examples`` (arrays), convert to an ML Program for ``target`` and save it."""
    import coremltools as ct
    import torch

    examples = tuple(examples) if isinstance(examples, (list, tuple)) else (examples,)
    names = names or [f"x{i}" for i in range(len(examples))]
    tensors = tuple(torch.from_numpy(np.asarray(e)) for e in examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), tensors, check_trace=False)
        ml = ct.convert(traced, inputs=[ct.TensorType(name=nm, shape=t.shape) for nm, t in zip(names, tensors)],
                        convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                        skip_model_load=True)
    ml.save(str(path))
    return Path(path)


def save_program(prog, path: Path, target: str = "iOS18", precision: str = "fp32") -> Path:
    """Save a ``mb.program`` as an ML Program package (coremltools' own conversion passes run on it)."""
    import coremltools as ct

    ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                    compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                    skip_model_load=True)
    ml.save(str(path))
    return Path(path)


def torch_outputs(module, *inputs: np.ndarray) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(np.asarray(x)) for x in inputs))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def rel_error(got, want) -> float:
    """max |got - want| / max(1, max |want|): the ``max_rel`` of ``compress.export.coreml.tolerances``."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def assert_close(got, want, bound: float, what: str = "") -> float:
    err = rel_error(got, want)
    assert err <= bound, f"{what}: max_rel {err:.3g} > {bound:.3g}"
    return err
