"""MIL ``conv_transpose`` (1-D, 2-D, 3-D; iOS15 and iOS17 signatures, which compute the same thing)."""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.linalg import conv_geometry
from compress.export.coreml.mil.ops.registry import F, op


def _full_conv_transpose(x: np.ndarray, w: np.ndarray, strides, dilations, groups: int) -> np.ndarray:
    """The uncropped transposed convolution: input pixel ``p`` and kernel tap ``k`` add into output position
    ``p * stride + k * dilation``; length ``(D_in - 1) * stride + (K - 1) * dilation + 1`` per axis.
    Weight layout is [C_in, C_out / groups, *K]."""
    n, c_in = x.shape[:2]
    spatial, kernel = x.shape[2:], w.shape[2:]
    cout_g = w.shape[1]
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, k, s, dl in zip(spatial, kernel, strides, dilations)]
    y = np.zeros((n, groups, cout_g, *full), dtype=np.float32)
    xg = x.reshape(n, groups, c_in // groups, *spatial)
    wg = w.reshape(groups, c_in // groups, cout_g, *kernel)
    for tap in np.ndindex(*kernel):
        contrib = np.einsum("ngi...,gio->ngo...", xg, wg[(Ellipsis,) + tap])
        window = tuple(slice(t * dl, t * dl + (d - 1) * s + 1, s)
                       for t, d, s, dl in zip(tap, spatial, strides, dilations))
        y[(slice(None),) * 3 + window] += contrib
    return y.reshape(n, groups * cout_g, *full)


def _output_window(a, spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, size) of the output inside the full result, per spatial axis.

    Size: ``output_shape`` when given (coremltools' ``add_conv_transpose_output_shape`` pass always adds it),
    else the type_inference rule of the pad_type. Begin: 0 (valid), ``pad[2i]`` (custom), or for ``same``
    half of ``full - size`` rounded down (TF conv2d_transpose / Core ML SamePadding BOTTOM_RIGHT_HEAVY).
    A size past the full result reads zeros there (plus bias)."""
    n_sp = len(spatial)
    pad_type = a.scalar("pad_type", "valid")
    if pad_type not in ("valid", "same", "custom"):
        raise InputError(f"MIL op 'conv_transpose' ({a.where}): pad_type '{pad_type}' is not supported")
    pads = a.ints("pad") or [0] * (2 * n_sp)
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, k, s, dl in zip(spatial, kernel, strides, dilations)]
    out_shape = a.ints("output_shape")
    window = []
    for i in range(n_sp):
        if out_shape is not None:
            size = out_shape[2 + i]
        elif pad_type == "same":
            size = spatial[i] * strides[i]
        elif pad_type == "custom":
            size = full[i] - pads[2 * i] - pads[2 * i + 1]
        else:
            size = full[i]
        if pad_type == "custom":
            begin = pads[2 * i]
        elif pad_type == "same":
            begin = max(full[i] - size, 0) // 2
        else:
            begin = 0
        window.append((begin, size))
    return window


@op("conv_transpose")
def _conv_transpose(a):
    x, w = F(a["x"]), F(a["weight"])
    n_sp, kernel, strides, dilations, groups = conv_geometry(a, x, w)
    full = _full_conv_transpose(x, w, strides, dilations, groups)
    window = _output_window(a, list(x.shape[2:]), kernel, strides, dilations)
    need = [max(b + s - f, 0) for (b, s), f in zip(window, full.shape[2:])]
    full = np.pad(full, [(0, 0), (0, 0)] + [(0, e) for e in need])
    y = full[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in window)]
    if a.get("bias") is not None:
        y = y + F(a["bias"]).reshape((1, -1) + (1,) * n_sp)
    return y
