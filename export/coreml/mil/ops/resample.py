"""MIL resampling ops: upsample/resize (nearest and bilinear), crop, crop_resize, and the space/depth/batch
rearrangements (pixel_shuffle, depth_to_space, space_to_batch and their inverses), and sampling at given
coordinates (``resample`` = torch ``grid_sample``, ``affine`` = ``affine_grid`` + ``grid_sample``).

Grid conventions follow coremltools' op docstrings (``iOS15/image_resizing.py``) and the ``SamplingMode`` section
of Core ML's NeuralNetwork.proto: every bilinear mode is "sample N points of the interval [0, X-1] and
interpolate linearly between the two nearest input pixels".
"""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, op, op_error

SAMPLING_MODES = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS")


def _fail(a, what: str, value) -> None:
    raise InputError(f"MIL op '{a.op_type}' ({a.where}): {what} {value!r} is not supported")


# ---- shared grid helpers -----------------------------------------------------------------------


def _interval_grid(start: float, end: float, n_out: int, mode: str) -> np.ndarray:
    """``n_out`` sample positions over the interval [start, end] (a box, or [0, X-1] for a whole axis).

    With ``L = end - start`` standing for the doc's ``X - 1``: STRICT_ALIGN_CORNERS / ALIGN_CORNERS are
    ``linspace(start, end)`` (ALIGN_CORNERS takes the midpoint when ``n_out == 1``); DEFAULT steps by
    ``X / n_out`` from ``start``; OFFSET_CORNERS steps by ``max(1, L) / n_out`` from half a step in;
    UNALIGN_CORNERS is the half-pixel rule ``(i + 0.5) * X / n_out - 0.5``.
    """
    i = np.arange(n_out, dtype=np.float64)
    length = end - start
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            return np.array([(start + end) / 2 if mode == "ALIGN_CORNERS" else start])
        return start + i * (length / (n_out - 1))
    if mode == "DEFAULT":
        return start + i * ((length + 1) / n_out)
    if mode == "OFFSET_CORNERS":
        delta = max(1.0, length) / n_out
        return start + 0.5 * delta + i * delta
    if mode == "UNALIGN_CORNERS":
        return start + (i + 0.5) * ((length + 1) / n_out) - 0.5
    raise ValueError(mode)


def _axis_grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Sample positions for resizing a whole axis of ``n_in`` pixels to ``n_out``, clamped into [0, n_in-1]."""
    return np.clip(_interval_grid(0.0, n_in - 1.0, n_out, mode), 0, n_in - 1)


def _lerp(x: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at in-range float positions ``pos``."""
    n = x.shape[axis]
    lo = np.floor(pos).astype(np.int64)
    lo = np.clip(lo, 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = len(pos)
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _bilinear(x, size_hw: tuple[int, int], mode: str) -> np.ndarray:
    x = F(x).astype(np.float32, copy=False)
    y = _lerp(x, x.ndim - 2, _axis_grid(x.shape[-2], size_hw[0], mode))
    return _lerp(y, y.ndim - 1, _axis_grid(x.shape[-1], size_hw[1], mode))


def _scaled_size(a, n: int, name: str) -> int:
    """floor(scale * n), as coremltools' type_inference computes it (scale is fp32 or int32)."""
    scale = np.asarray(a.get(name, 1)).reshape(())
    return int(np.floor(scale.astype(np.float32) * np.float32(n))) if scale.dtype.kind == "f" else int(scale) * n


def _nearest_index(n_in: int, n_out: int, half_pixel: bool) -> np.ndarray:
    """Source index per output index, in exact integer arithmetic.

    Legacy: ``floor(dst * n_in / n_out)`` (torch 'nearest', TF ResizeNearestNeighbor without half-pixel
    centers). Half-pixel: ``floor((dst + 0.5) * n_in / n_out)`` (torch 'nearest-exact', TF with
    ``half_pixel_centers=True``). The ratio comes from the sizes, not from a float scale: coremltools' TF
    frontend emits ``scale = (n_out + 1e-4) / n_in`` for non-integer ratios and its tests pass against TF,
    which only holds when the runtime derives the index from the sizes.
    """
    dst = np.arange(n_out, dtype=np.int64)
    src = ((2 * dst + 1) * n_in) // (2 * n_out) if half_pixel else (dst * n_in) // n_out
    return np.minimum(src, n_in - 1)


def _nearest(x, size_hw: tuple[int, int], half_pixel: bool) -> np.ndarray:
    x = np.asarray(x)
    y = np.take(x, _nearest_index(x.shape[-2], size_hw[0], half_pixel), axis=-2)
    return np.take(y, _nearest_index(x.shape[-1], size_hw[1], half_pixel), axis=-1)


# ---- upsample / resize -------------------------------------------------------------------------


@op("upsample_nearest_neighbor")
def _upsample_nn(a):
    """Integer or fractional scales (iOS15+): output size floor(scale * n), src = floor(dst * n_in / n_out)."""
    x = np.asarray(a["x"])
    size = (_scaled_size(a, x.shape[-2], "scale_factor_height"), _scaled_size(a, x.shape[-1], "scale_factor_width"))
    return _nearest(x, size, half_pixel=False)


@op("resize_nearest_neighbor")
def _resize_nn(a):
    """Half-pixel nearest: the op coremltools emits for TF ``ResizeNearestNeighbor(half_pixel_centers=True)``."""
    size = (int(a.scalar("target_size_height")), int(a.scalar("target_size_width")))
    return _nearest(a["x"], size, half_pixel=True)


@op("upsample_bilinear")
def _upsample_bilinear(a):
    """align_corners (default True) samples linspace(0, X-1); otherwise half-pixel centers with spacing
    X_in / X_out (the scale is recomputed from the sizes). iOS16 adds half_pixel_centers (default: not
    align_corners); both False is TF's legacy rule ``dst * X_in / X_out``."""
    x = a["x"]
    size = (_scaled_size(a, x.shape[-2], "scale_factor_height"), _scaled_size(a, x.shape[-1], "scale_factor_width"))
    align = bool(a.scalar("align_corners", True))
    half_pixel = bool(a.scalar("half_pixel_centers", not align))
    if align and half_pixel:
        _fail(a, "align_corners=True with half_pixel_centers", True)
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    return _bilinear(x, size, mode)


@op("resize_bilinear")
def _resize_bilinear(a):
    mode = a.scalar("sampling_mode", "DEFAULT")
    if mode not in SAMPLING_MODES:
        _fail(a, "sampling_mode", mode)
    size = (int(a.scalar("target_size_height", 1)), int(a.scalar("target_size_width", 1)))
    return _bilinear(a["x"], size, mode)


@op("resize")
def _resize(a):
    """iOS17: resize the last ``resized_dims`` axes to the tail of ``shape`` (0 keeps the input size)."""
    x = a["x"]
    shape = [int(s) for s in np.asarray(a["shape"]).ravel()]
    k = int(a.scalar("resized_dims"))
    interp = a.scalar("interpolation_mode", "LINEAR")
    mode = a.scalar("sampling_mode", "DEFAULT")
    if k > len(shape) or len(shape) > x.ndim:
        _fail(a, "resized_dims / shape", (k, shape))
    if mode not in SAMPLING_MODES:
        _fail(a, "sampling_mode", mode)
    if interp not in ("LINEAR", "NEAREST_NEIGHBOR"):
        _fail(a, "interpolation_mode", interp)
    if interp == "NEAREST_NEIGHBOR" and mode != "DEFAULT":
        _fail(a, "NEAREST_NEIGHBOR with sampling_mode", mode)
    y = x if interp == "NEAREST_NEIGHBOR" else F(x).astype(np.float32, copy=False)
    for j, target in enumerate(shape[len(shape) - k :]):
        axis = x.ndim - k + j
        n_out = x.shape[axis] if target == 0 else target
        if interp == "LINEAR":
            y = _lerp(y, axis, _axis_grid(x.shape[axis], n_out, mode))
        else:  # what coremltools' TF frontend emits for half_pixel_centers=True (see resize_nearest_neighbor)
            y = np.take(y, _nearest_index(x.shape[axis], n_out, half_pixel=True), axis=axis)
    return y


# ---- crop / crop_resize ------------------------------------------------------------------------


@op("crop")
def _crop(a):
    x = np.asarray(a["x"])
    (top, bottom), (left, right) = a.ints("crop_height"), a.ints("crop_width")
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


_BOX_CORNERS = {  # box_coordinate_mode -> function of the 4 values giving (y1, x1, y2, x2)
    "CORNERS_HEIGHT_FIRST": lambda b: (b[0], b[1], b[2], b[3]),
    "CORNERS_WIDTH_FIRST": lambda b: (b[1], b[0], b[3], b[2]),
    "CENTER_SIZE_HEIGHT_FIRST": lambda b: (b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2),
    "CENTER_SIZE_WIDTH_FIRST": lambda b: (b[1] - b[3] / 2, b[0] - b[2] / 2, b[1] + b[3] / 2, b[0] + b[2] / 2),
}


def _crop_one(image: np.ndarray, box, size_hw, mode: str, pad_value: float) -> np.ndarray:
    """Bilinear samples of one (C, H, W) image over one (y1, x1, y2, x2) pixel box; points outside
    [0, H-1] x [0, W-1] read ``pad_value`` (TF crop_and_resize's extrapolation_value)."""
    h, w = image.shape[-2:]
    ys = _interval_grid(box[0], box[2], size_hw[0], mode)
    xs = _interval_grid(box[1], box[3], size_hw[1], mode)
    y = _lerp(_lerp(image, 1, np.clip(ys, 0, h - 1)), 2, np.clip(xs, 0, w - 1))
    outside = ((ys < 0) | (ys > h - 1))[:, None] | ((xs < 0) | (xs > w - 1))[None, :]
    return np.where(outside[None], np.float32(pad_value), y)


@op("crop_resize")
def _crop_resize(a):
    """iOS15/16: ``roi`` (N, 1, 4|5, 1, 1) -> (N, B|1, C, h, w); iOS17: ``boxes`` (N, 4) + ``box_indices``
    -> (N, C, h, w). Coordinates are pixels in [0, H-1] (or [0, 1] scaled by H-1 when normalized), times
    ``spatial_scale``. Over a box, only the modes whose box rule the spec states are accepted."""
    x = F(a["x"]).astype(np.float32, copy=False)
    mode = a.scalar("sampling_mode", "DEFAULT")
    if mode not in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "OFFSET_CORNERS"):
        _fail(a, "sampling_mode (over a box)", mode)
    coord_mode = a.scalar("box_coordinate_mode", "CORNERS_HEIGHT_FIRST")
    if coord_mode not in _BOX_CORNERS:
        _fail(a, "box_coordinate_mode", coord_mode)
    size = (int(a.scalar("target_height", 1)), int(a.scalar("target_width", 1)))
    pad_value = float(a.scalar("pad_value", 0.0))
    h, w = x.shape[-2:]
    scale = np.array([h - 1, w - 1, h - 1, w - 1]) if a.scalar("normalized_coordinates", False) else np.ones(4)
    scale = scale * float(a.scalar("spatial_scale", 1.0))

    def box_of(values):
        y1, x1, y2, x2 = _BOX_CORNERS[coord_mode](np.asarray(values, dtype=np.float64))
        return np.array([y1, x1, y2, x2]) * scale

    if "boxes" in a:  # iOS17
        boxes = np.asarray(a["boxes"], dtype=np.float64)
        indices = a.ints("box_indices") or list(range(len(boxes)))
        return np.stack([_crop_one(x[b], box_of(bx), size, mode, pad_value) for bx, b in zip(boxes, indices)])
    roi = np.asarray(a["roi"], dtype=np.float64).reshape(a["roi"].shape[0], -1)
    if roi.shape[1] == 5:
        if x.shape[0] != 1:  # docstring: (N, 1, C, h, w); coremltools' type_inference declares (N, B, C, h, w)
            _fail(a, "a (N, 1, 5, 1, 1) roi on a batch of", x.shape[0])
        return np.stack([_crop_one(x[int(r[0])], box_of(r[1:]), size, mode, pad_value) for r in roi])[:, None]
    return np.stack([np.stack([_crop_one(img, box_of(r), size, mode, pad_value) for img in x]) for r in roi])


# ---- space / depth / batch rearrangement -------------------------------------------------------


@op("pixel_shuffle")
def _pixel_shuffle(a):
    """torch PixelShuffle: channel c*f*f + i*f + j goes to out[c, h*f + i, w*f + j]."""
    x = np.asarray(a["x"])
    f = int(a.scalar("upscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (f * f), h * f, w * f)


@op("pixel_unshuffle")
def _pixel_unshuffle(a):
    x = np.asarray(a["x"])
    f = int(a.scalar("downscale_factor"))
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * f * f, h // f, w // f)


@op("depth_to_space")
def _depth_to_space(a):
    """TF DepthToSpace (DCR order) in NCHW: channel (i*b + j)*C' + c goes to out[c, h*b + i, w*b + j]."""
    x = np.asarray(a["x"])
    b = int(a.scalar("block_size"))
    n, c, h, w = x.shape
    return x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


@op("space_to_depth")
def _space_to_depth(a):
    x = np.asarray(a["x"])
    b = int(a.scalar("block_size"))
    n, c, h, w = x.shape
    return x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


@op("space_to_batch")
def _space_to_batch(a):
    """TF SpaceToBatchND in NCHW: zero-pad, then block offset (i, j) of image n goes to batch (i*b1 + j)*N + n."""
    x = np.asarray(a["x"])
    b0, b1 = a.ints("block_shape")
    (t, bt), (l, r) = np.asarray(a["paddings"]).reshape(2, 2).tolist()
    x = np.pad(x, [(0, 0), (0, 0), (t, bt), (l, r)])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b0, b0, w // b1, b1).transpose(3, 5, 0, 1, 2, 4)
    return y.reshape(b0 * b1 * n, c, h // b0, w // b1)


@op("batch_to_space")
def _batch_to_space(a):
    x = np.asarray(a["x"])
    b0, b1 = a.ints("block_shape")
    (t, bt), (l, r) = np.asarray(a["crops"]).reshape(2, 2).tolist()
    nb, c, h, w = x.shape
    n = nb // (b0 * b1)
    y = x.reshape(b0, b1, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * b0, w * b1)
    return y[:, :, t : h * b0 - bt, l : w * b1 - r]


# ---- sampling at coordinates (resample = torch grid_sample, affine = affine_grid + grid_sample) ------------

_RESAMPLE_PADDING = ("constant", "border", "reflection", "symmetric")


def _to_pixels(c: np.ndarray, size: int, coordinates_mode: str, align_corners: bool) -> np.ndarray:
    """Coordinates along one image axis as pixel positions (0 = centre of the first pixel)."""
    if coordinates_mode == "unnormalized":
        return c
    if coordinates_mode == "normalized_minus_one_to_one":
        return (c + 1) / 2 * (size - 1) if align_corners else ((c + 1) * size - 1) / 2
    if coordinates_mode == "normalized_zero_to_one":
        return c * (size - 1) if align_corners else c * size - 0.5
    raise ValueError(coordinates_mode)


def _fold(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """``p`` reflected back and forth into ``[low, high]`` (mirror images at both ends)."""
    span = high - low
    if span <= 0:
        return np.zeros_like(p)
    t = np.mod(p - low, 2 * span)
    return low + np.where(t > span, 2 * span - t, t)


def _pad_positions(p: np.ndarray, size: int, padding_mode: str) -> np.ndarray:
    """Pixel positions after the padding rule: border clamps, reflection mirrors about the edge pixels'
    centres (``|1 2 3| -> 2 3 2 1 2 3 2 1``), symmetric about their outer edges (``3 2 1 1 2 3 3 2 1``)."""
    if padding_mode == "border":
        return np.clip(p, 0, size - 1)
    if padding_mode == "reflection":
        return np.clip(_fold(p, 0, size - 1), 0, size - 1)
    if padding_mode == "symmetric":
        return np.clip(_fold(p, -0.5, size - 0.5), 0, size - 1)
    return p


def _sample(a, x: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """``x`` (B, C, H, W) sampled at (B, Ho, Wo) coordinates ``cx``/``cy`` per the op's modes -> (B, C, Ho, Wo)."""
    sampling, padding = str(a.get("sampling_mode", "bilinear")).lower(), str(a.get("padding_mode", "constant")).lower()
    coordinates_mode = str(a.get("coordinates_mode", "normalized_minus_one_to_one")).lower()
    if sampling not in ("bilinear", "nearest") or padding not in _RESAMPLE_PADDING or coordinates_mode not in (
            "unnormalized", "normalized_minus_one_to_one", "normalized_zero_to_one"):
        raise op_error(a, f"sampling_mode '{sampling}' / padding_mode '{padding}' / coordinates_mode "
                       f"'{coordinates_mode}' is not supported")
    align = bool(a.scalar("align_corners", False))
    height, width = x.shape[2:]
    px = _pad_positions(_to_pixels(cx, width, coordinates_mode, align), width, padding)
    py = _pad_positions(_to_pixels(cy, height, coordinates_mode, align), height, padding)
    pad_value = float(a.scalar("padding_value", 0.0))
    batch = np.arange(x.shape[0])[:, None, None]

    def tap(ix, iy):  # (B, Ho, Wo) integer positions -> (B, C, Ho, Wo), padding_value outside the image
        inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        v = x[batch, :, np.clip(iy, 0, height - 1), np.clip(ix, 0, width - 1)]  # (B, Ho, Wo, C)
        return np.moveaxis(np.where(inside[..., None], v, pad_value), -1, 1)

    if sampling == "nearest":  # ties round half to even, as torch's grid_sample does
        return tap(np.rint(px).astype(np.int64), np.rint(py).astype(np.int64))
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    wx, wy = (px - x0)[:, None], (py - y0)[:, None]
    return ((1 - wy) * ((1 - wx) * tap(x0, y0) + wx * tap(x0 + 1, y0))
            + wy * ((1 - wx) * tap(x0, y0 + 1) + wx * tap(x0 + 1, y0 + 1)))


@op("resample")
def _resample(a):
    """``output[b, c, h, w] = x[b, c]`` sampled at ``coordinates[b, h, w] = (x, y)`` (iOS15; iOS16/17 only
    widen the coordinate dtypes)."""
    coordinates = F(a["coordinates"]).astype(np.float32)
    return _sample(a, F(a["x"]), coordinates[..., 0], coordinates[..., 1])


@op("affine")
def _affine(a):
    """Sample ``x`` at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` for each output pixel's normalized ``(x, y)``
    (the grid of torch's ``affine_grid``); one ``[a0, a1, a2, b0, b1, b2]`` row per batch item or one for all."""
    x, matrix = F(a["x"]), F(a["transform_matrix"]).reshape(-1, 6)
    out_h, out_w = int(a.scalar("output_height")), int(a.scalar("output_width"))
    if str(a.get("coordinates_mode", "normalized_minus_one_to_one")).lower() != "normalized_minus_one_to_one":
        raise op_error(a, f"coordinates_mode '{a.get('coordinates_mode')}' is not supported")
    align = bool(a.scalar("align_corners", False))

    def axis(n):  # normalized output pixel centres, as affine_grid makes them
        return np.linspace(-1, 1, n) if align else (2 * np.arange(n) + 1) / n - 1

    gy, gx = np.meshgrid(axis(out_h), axis(out_w), indexing="ij")
    m = np.broadcast_to(matrix, (x.shape[0], 6))[:, :, None, None]
    cx = m[:, 0] * gx + m[:, 1] * gy + m[:, 2]
    cy = m[:, 3] * gx + m[:, 4] * gy + m[:, 5]
    return _sample(a, x, cx.astype(np.float32), cy.astype(np.float32))
