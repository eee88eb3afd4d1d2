"""MIL resampling, space/depth rearrangement and transposed convolution in the numpy reference evaluator.

torch modules are converted with coremltools (iOS16 and iOS18, fp32 and fp16) and compared with torch on real
digit images; ops torch cannot emit are built with coremltools' Builder and compared with torch functional
twins where one exists, otherwise with plainly written per-pixel formulas taken from the op docstrings (and
the literal expected values of coremltools' own op tests). Every case asserts that the op under test is in the
saved program. Bounds: ``OP_REL`` (fp32 1e-5; fp16 5e-3 of max(1, max |reference|)).
"""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

from tests.mil_cases import (  # noqa: E402
    OP_REL,
    assert_close,
    convert_torch,
    digit_images,
    digit_sequences,
    save_program,
    torch_outputs,
)

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.mil.evaluator import load_program  # noqa: E402

TARGETS = ["iOS16", "iOS18"]
PRECISIONS = ["fp32", "fp16"]
SAMPLING_MODES = ["STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS"]


def _check_torch(module, x, op_type, tmp_path, target, precision) -> float:
    """Convert ``module``, evaluate it, compare every output with torch; return the worst max_rel."""
    path = convert_torch(module, x, tmp_path / "m.mlpackage", target=target, precision=precision)
    program = load_program(path)
    assert op_type in program.op_types, f"{op_type} not emitted: {program.op_types}"
    got = program.evaluate({"x0": x})
    wants = torch_outputs(module, x)
    assert len(program.outputs) == len(wants)
    return max(assert_close(got[name], want, OP_REL[precision], f"{op_type} {target} {precision} output {i}")
               for i, (name, want) in enumerate(zip(program.outputs, wants)))


def _run_builder(fn, x, op_type, tmp_path, target="iOS18", precision="fp32"):
    """Build ``fn(x0)`` with coremltools' Builder, save it, evaluate it on ``x``; a list of outputs gives a list."""

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=getattr(ct.target, target))
    def prog(x0):
        return fn(x0)

    path = save_program(prog, tmp_path / f"b_{target}_{precision}.mlpackage", target, precision)
    program = load_program(path)
    assert op_type in program.op_types, f"{op_type} not emitted: {program.op_types}"
    out = program.evaluate({"x0": x})
    return [out[name] for name in program.outputs] if len(program.outputs) > 1 else out[program.outputs[0]]


# ---- upsample / interpolate from torch ----------------------------------------------------------

class Many(nn.Module):
    """Several functions of one input, returned as a tuple (one conversion checks them all)."""

    def __init__(self, *fns):
        super().__init__()
        self.fns = fns
        self.mods = nn.ModuleList([f for f in fns if isinstance(f, nn.Module)])

    def forward(self, x):
        return tuple(f(x) for f in self.fns)


def _interp(**kw):
    return lambda x: Fn.interpolate(x, **kw)


TORCH_INTERP = {  # name -> (module, channels, size, op that must appear)
    # the fractional-scale bug: 32 -> 48 (and 8 -> 12 below) must not come back at the input size
    "nearest_32to48": (Many(_interp(scale_factor=1.5, mode="nearest")), 3, 32, "upsample_nearest_neighbor"),
    "nearest_8": (Many(_interp(size=(12, 12), mode="nearest"), _interp(scale_factor=1.5, mode="nearest"),
                       _interp(scale_factor=2, mode="nearest"), _interp(scale_factor=(2, 3), mode="nearest")),
                  3, 8, "upsample_nearest_neighbor"),
    "bilinear_8": (Many(*[_interp(mode="bilinear", align_corners=ac, **size) for ac in (True, False)
                          for size in ({"scale_factor": 2}, {"scale_factor": 1.5}, {"size": (11, 13)})]),
                   3, 8, "upsample_bilinear"),
    "pixel_shuffle": (Many(nn.PixelShuffle(2), nn.PixelUnshuffle(2)), 8, 8, "pixel_shuffle"),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(TORCH_INTERP))
def test_interpolate_matches_torch(case, target, precision, tmp_path):
    module, channels, size, op_type = TORCH_INTERP[case]
    x = digit_images(2, channels, size)
    _check_torch(module, x, op_type, tmp_path, target, precision)
    if case == "pixel_shuffle":
        assert "pixel_unshuffle" in load_program(tmp_path / "m.mlpackage").op_types


def test_fractional_nearest_cases_from_coremltools(tmp_path):
    """coremltools' own iOS15 test: scales 3.17 / 0.67 / 1.12 on a 1x3 row."""
    x = np.array([1.5, -2.5, 3.5], dtype=np.float32).reshape(1, 1, 1, 3)
    got = _run_builder(lambda v: [mb.upsample_nearest_neighbor(x=v, scale_factor_height=3.17, scale_factor_width=0.67),
                                  mb.upsample_nearest_neighbor(x=v, scale_factor_height=2.0, scale_factor_width=1.12)],
                       x, "upsample_nearest_neighbor", tmp_path, "iOS16")
    np.testing.assert_array_equal(got[0], np.array([1.5, -2.5] * 3, dtype=np.float32).reshape(1, 1, 3, 2))
    np.testing.assert_array_equal(got[1], np.array([1.5, -2.5, 3.5] * 2, dtype=np.float32).reshape(1, 1, 2, 3))


# ---- bilinear grids: Builder vs torch twins or per-pixel doc formulas ----------------------------


def _doc_coord(mode: str, i: int, n_in: int, n_out: int) -> float:
    """The grid point of output ``i`` exactly as the resize_bilinear docstring writes it."""
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            return (n_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0
        g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = 0.0 if n_out == 1 else i * (n_in - n_in / n_out) / (n_out - 1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * ((n_out - 1) * delta) / max(n_out - 1, 1)
    else:  # UNALIGN_CORNERS
        s = n_in / n_out
        g = i * s + 0.5 * s - 0.5
    return min(n_in - 1, max(0.0, g))


def _bilinear_at(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear read of ``img[..., H, W]`` at an in-range point, from the four surrounding pixels."""
    h, w = img.shape[-2:]
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    top = img[..., y0, x0] * (1 - dx) + img[..., y0, x1] * dx
    bottom = img[..., y1, x0] * (1 - dx) + img[..., y1, x1] * dx
    return top * (1 - dy) + bottom * dy


def _doc_resize(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (out_h, out_w), dtype=np.float64)
    for r in range(out_h):
        for c in range(out_w):
            y, xx = _doc_coord(mode, r, h, out_h), _doc_coord(mode, c, w, out_w)
            out[..., r, c] = _bilinear_at(x.astype(np.float64), y, xx)
    return out


def _torch_resize(x, out_h, out_w, align_corners):
    t = torch.from_numpy(x)
    return Fn.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=align_corners).numpy()


RESIZE_CASES = [(mode, size) for mode in SAMPLING_MODES for size in [(12, 5), (16, 11)]]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_resize_bilinear_modes(target, precision, tmp_path):
    x = digit_images(2, 3, 8)
    got = _run_builder(lambda v: [mb.resize_bilinear(x=v, target_size_height=h, target_size_width=w, sampling_mode=mode)
                                  for mode, (h, w) in RESIZE_CASES], x, "resize_bilinear", tmp_path, target, precision)
    for out, (mode, (h, w)) in zip(got, RESIZE_CASES):
        if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "UNALIGN_CORNERS"):  # torch twins
            want = _torch_resize(x, h, w, align_corners=mode != "UNALIGN_CORNERS")
        else:
            want = _doc_resize(x, h, w, mode)
        assert_close(out, want, OP_REL[precision], f"resize_bilinear {mode} {target}")


def test_resize_bilinear_doc_grid_points(tmp_path):
    """The docstring's own example: x = [0, 1] resized to 5 and 6 points returns the grid points."""
    x = np.array([0, 1], dtype=np.float32).reshape(1, 1, 2)
    expected = {
        ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
        ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
        ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
        ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
        ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
        ("ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
        ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
        ("ALIGN_CORNERS", 1): [0.5],
    }
    got = _run_builder(lambda v: [mb.resize_bilinear(x=v, target_size_height=1, target_size_width=n, sampling_mode=mode)
                                  for mode, n in expected], x, "resize_bilinear", tmp_path)
    for out, ((mode, n), want) in zip(got, expected.items()):
        np.testing.assert_allclose(out.ravel(), want, atol=1e-6, err_msg=f"{mode} {n}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_upsample_bilinear_half_pixel_centers_ios16(precision, tmp_path):
    x = digit_images(2, 3, 8)
    cases = [(True, 1.5), (False, 1.5), (False, 2.0)]
    got = _run_builder(lambda v: [mb.upsample_bilinear(x=v, scale_factor_height=scale, scale_factor_width=scale,
                                                       align_corners=False, half_pixel_centers=half_pixel)
                                  for half_pixel, scale in cases], x, "upsample_bilinear", tmp_path, "iOS16", precision)
    for out, (half_pixel, scale) in zip(got, cases):
        n = int(8 * scale)
        want = _torch_resize(x, n, n, False) if half_pixel else _doc_resize(x, n, n, "DEFAULT")  # TF legacy rule
        assert_close(out, want, OP_REL[precision], f"upsample_bilinear half_pixel_centers={half_pixel} x{scale}")


# ---- nearest-neighbour resize and iOS17 resize -------------------------------------------------


def _torch_nearest_exact(x, out_h, out_w):
    return Fn.interpolate(torch.from_numpy(x), size=(out_h, out_w), mode="nearest-exact").numpy()


@pytest.mark.parametrize("target", TARGETS)
def test_resize_nearest_neighbor_is_half_pixel(target, tmp_path):
    x = digit_images(2, 3, 8)
    sizes = [(12, 20), (5, 3)]
    got = _run_builder(lambda v: [mb.resize_nearest_neighbor(x=v, target_size_height=h, target_size_width=w)
                                  for h, w in sizes], x, "resize_nearest_neighbor", tmp_path, target)
    for out, (h, w) in zip(got, sizes):
        np.testing.assert_array_equal(out, _torch_nearest_exact(x, h, w))


@pytest.mark.parametrize("target", ["iOS17", "iOS18"])
def test_resize_ios17(target, tmp_path):
    x = digit_images(2, 3, 8)
    modes = ["STRICT_ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS"]

    def build(v):
        def resize(shape, dims, **kw):
            return mb.resize(x=v, shape=np.array(shape, np.int32), resized_dims=np.uint32(dims), **kw)

        outs = [resize([12, 5], 2, sampling_mode=m) for m in modes]
        outs.append(resize([0, 11], 2, interpolation_mode="NEAREST_NEIGHBOR"))
        outs.append(resize([7, 13], 1, sampling_mode="UNALIGN_CORNERS"))
        return outs

    got = _run_builder(build, x, "resize", tmp_path, target)
    for out, mode in zip(got, modes):
        assert_close(out, _doc_resize(x, 12, 5, mode), OP_REL["fp32"], f"resize LINEAR {mode}")
    np.testing.assert_array_equal(got[-2], _torch_nearest_exact(x, 8, 11))
    assert_close(got[-1], _torch_resize(x, 8, 13, False), OP_REL["fp32"], "resize last axis only")


# ---- crop and crop_resize ----------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_crop(precision, tmp_path):
    x = digit_images(2, 3, 8)
    got = _run_builder(lambda v: mb.crop(x=v, crop_height=[1, 2], crop_width=[0, 3]),
                       x, "crop", tmp_path, "iOS16", precision)
    assert_close(got, x[:, :, 1:6, 0:5], OP_REL[precision], "crop")


def _doc_crop_resize(img, box, th, tw, mode, pad=0.0):
    """Per-pixel crop_resize of one (C, H, W) image over a (y1, x1, y2, x2) pixel box."""
    h, w = img.shape[-2:]

    def coord(i, a, b, n):
        if mode == "OFFSET_CORNERS":
            return a + (i + 0.5) * max(1.0, b - a) / n
        if n == 1:
            return (a + b) / 2 if mode == "ALIGN_CORNERS" else a
        return a + i * (b - a) / (n - 1)

    out = np.zeros(img.shape[:-2] + (th, tw))
    for r in range(th):
        for c in range(tw):
            y, xx = coord(r, box[0], box[2], th), coord(c, box[1], box[3], tw)
            inside = 0 <= y <= h - 1 and 0 <= xx <= w - 1
            out[..., r, c] = _bilinear_at(img.astype(np.float64), y, xx) if inside else pad
    return out


def test_crop_resize_coremltools_values(tmp_path):
    """The literal cases of coremltools' own crop_resize tests (4x4 ramp, ALIGN_CORNERS; iOS16 with pad_value)."""
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    cases = [
        ([[0, 1, 1, 2, 2]], 2, False, [6, 7, 10, 11]),
        ([[0, 1, 1, 2, 2]], 1, False, [8.5]),
        ([[0, 0.0, 0.0, 1 / 3, 1 / 3]], 2, True, [1, 2, 5, 6]),
        ([[0, 2, 2, 1, 1]], 2, False, [11, 10, 7, 6]),
        ([[0, 0.1, 0.3, 1.3, 1], [0, 0.5, 1.8, 1.0, 0.3], [0, 0.0, 0.4, 0.6, 0.7]], 2, True,
         [3.1, 5.2, 10, 10, 10, 7.899, 10, 13.9, 2.2, 3.1, 9.4, 10.3]),
    ]
    def build(v):
        return [mb.crop_resize(x=v, roi=np.array(roi, np.float32).reshape(len(roi), 1, 5, 1, 1), target_height=n, target_width=n,
                               normalized_coordinates=norm, sampling_mode="ALIGN_CORNERS", pad_value=10.0)
                for roi, n, norm, _ in cases]

    got = _run_builder(build, x, "crop_resize", tmp_path, "iOS16")
    for out, (roi, _, _, want) in zip(got, cases):
        np.testing.assert_allclose(out.ravel(), want, atol=2e-3, err_msg=str(roi))  # their table rounds 7.9 to 7.899


BOX_MODES = ["ALIGN_CORNERS", "STRICT_ALIGN_CORNERS", "OFFSET_CORNERS"]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_crop_resize_ios15_16(precision, tmp_path):
    x = digit_images(2, 3, 8)
    # [h_center, w_center, box_h, box_w] times spatial_scale 0.5: boxes (1, 2)-(5, 6) and (2, 0.5)-(8, 3.5) (past the bottom)
    roi = np.array([[6, 8, 8, 8], [10, 4, 12, 6]], np.float32).reshape(2, 1, 4, 1, 1)
    got = _run_builder(lambda v: [mb.crop_resize(x=v, roi=roi, target_height=5, target_width=3, spatial_scale=0.5, pad_value=-1.5,
                                                 box_coordinate_mode="CENTER_SIZE_HEIGHT_FIRST", sampling_mode=m)
                                  for m in BOX_MODES], x, "crop_resize", tmp_path, "iOS16", precision)
    boxes = [(1, 2, 5, 6), (2, 0.5, 8, 3.5)]
    for out, mode in zip(got, BOX_MODES):
        want = np.stack([np.stack([_doc_crop_resize(img, b, 5, 3, mode, -1.5) for img in x]) for b in boxes])
        assert_close(out, want, OP_REL[precision], f"crop_resize iOS16 {mode}")
    # iOS15: batch index per box (one image: coremltools declares (N, B, ...) there), normalized, CORNERS_WIDTH_FIRST
    roi5 = np.array([[0, 0.0, 0.25, 0.5, 1.0], [0, 0.5, -0.25, 1.0, 0.5]], np.float32).reshape(2, 1, 5, 1, 1)
    x1 = x[1:]
    got = _run_builder(lambda v: [mb.crop_resize(x=v, roi=roi5, target_height=4, target_width=4, normalized_coordinates=True,
                                                 box_coordinate_mode="CORNERS_WIDTH_FIRST", sampling_mode=m)
                                  for m in BOX_MODES], x1, "crop_resize", tmp_path, "iOS16" if precision == "fp16" else "iOS15", precision)
    for out, mode in zip(got, BOX_MODES):
        want = np.stack([_doc_crop_resize(x1[0], (1.75, 0, 7, 3.5), 4, 4, mode)[None],
                         _doc_crop_resize(x1[0], (-1.75, 3.5, 3.5, 7), 4, 4, mode)[None]])
        assert_close(out, want, OP_REL[precision], f"crop_resize iOS15 {mode}")


def test_crop_resize_rejects_batch_index_roi_on_a_batch():
    """(N, 1, 5, 1, 1) roi on B > 1 images: the docstring says (N, 1, C, h, w), type_inference (N, B, C, h, w)."""
    from compress.export.coreml.mil.ops import OPS, Args

    args = Args({"x": [np.zeros((2, 1, 4, 4), np.float32)], "roi": [np.zeros((1, 1, 5, 1, 1), np.float32)],
                 "sampling_mode": ["ALIGN_CORNERS"]}, "crop_resize", "op 'c'")
    with pytest.raises(InputError, match="crop_resize"):
        OPS["crop_resize"](args)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_crop_resize_ios17(precision, tmp_path):
    x = digit_images(2, 3, 8)
    boxes = np.array([[0.5, 1, 6, 7], [2, 2, 4, 3], [-1, 0, 3, 5]], np.float32)
    indices = np.array([1, 0, 1], np.int32)
    got = _run_builder(lambda v: mb.crop_resize(x=v, boxes=boxes, box_indices=indices, target_height=4, target_width=6,
                                                sampling_mode="ALIGN_CORNERS", pad_value=2.0),
                       x, "crop_resize", tmp_path, "iOS18", precision)
    want = np.stack([_doc_crop_resize(x[b], box, 4, 6, "ALIGN_CORNERS", 2.0) for b, box in zip([1, 0, 1], boxes)])
    assert_close(got, want, OP_REL[precision], "crop_resize iOS17")


def test_crop_resize_rejects_unspecified_box_modes(tmp_path):
    x = digit_images(1, 1, 8)
    with pytest.raises(InputError, match="crop_resize.*DEFAULT"):
        boxes = np.array([[0, 0, 4, 4]], np.float32)
        _run_builder(lambda v: mb.crop_resize(x=v, boxes=boxes, target_height=2, target_width=2), x, "crop_resize", tmp_path)


# ---- space / depth / batch rearrangement -------------------------------------------------------


def _ref_depth_to_space(x, b):
    n, c, h, w = x.shape
    out = np.zeros((n, c // (b * b), h * b, w * b), x.dtype)
    for ch in range(c):  # TF DCR order: channel = (i * b + j) * C_out + c_out
        block, c_out = divmod(ch, c // (b * b))
        i, j = divmod(block, b)
        out[:, c_out, i::b, j::b] = x[:, ch]
    return out


def _ref_space_to_batch(x, b0, b1, pads):
    xp = np.pad(x, [(0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])])
    n = x.shape[0]
    return np.concatenate([xp[:, :, i::b0, j::b1] for i in range(b0) for j in range(b1)], axis=0).reshape(
        b0 * b1 * n, x.shape[1], xp.shape[2] // b0, xp.shape[3] // b1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_space_depth_batch(target, precision, tmp_path):
    x = digit_images(2, 8, 8)
    rel = OP_REL[precision]
    pads = [[0, 2], [1, 1]]

    def build(v):
        batched = mb.space_to_batch(x=v, block_shape=[2, 5], paddings=pads)
        return [mb.depth_to_space(x=v, block_size=2), mb.space_to_depth(x=v, block_size=2), batched,
                mb.batch_to_space(x=batched, block_shape=[2, 5], crops=pads)]

    d2s, s2d, s2b, b2s = _run_builder(build, x, "depth_to_space", tmp_path, target, precision)
    op_types = set(load_program(tmp_path / f"b_{target}_{precision}.mlpackage").op_types)
    assert {"space_to_depth", "space_to_batch", "batch_to_space"} <= op_types
    assert_close(d2s, _ref_depth_to_space(x, 2), rel, "depth_to_space")
    assert_close(_ref_depth_to_space(s2d, 2), x, rel, "space_to_depth inverts depth_to_space")
    assert_close(s2b, _ref_space_to_batch(x, 2, 5, pads), rel, "space_to_batch")
    assert_close(b2s, x, rel, "batch_to_space inverts space_to_batch")


def test_space_to_batch_coremltools_values(tmp_path):
    x = np.arange(1, 17, dtype=np.float32).reshape(2, 1, 2, 4)
    got = _run_builder(lambda v: mb.space_to_batch(x=v, block_shape=[2, 2], paddings=[[0, 0], [2, 0]]),
                       x, "space_to_batch", tmp_path)
    want = [[0, 1, 3], [0, 9, 11], [0, 2, 4], [0, 10, 12], [0, 5, 7], [0, 13, 15], [0, 6, 8], [0, 14, 16]]
    np.testing.assert_array_equal(got, np.array(want, np.float32).reshape(8, 1, 1, 3))


# ---- conv_transpose ----------------------------------------------------------------------------

torch.manual_seed(0)  # the modules below draw their weights at import
CONV_T = {  # name -> (module, input, ops that must appear)
    "2d": (Many(nn.ConvTranspose2d(4, 4, 3),
                nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
                nn.ConvTranspose2d(4, 5, (3, 2), stride=(2, 3), padding=(2, 1), dilation=(2, 1), bias=False),
                nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4)),
           lambda: digit_images(2, 4, 8), {"conv_transpose", "crop"}),
    "1d": (Many(nn.ConvTranspose1d(4, 6, 3, stride=2, padding=2, output_padding=1, dilation=2),
                nn.ConvTranspose1d(4, 4, 5, stride=3, groups=2)),
           lambda: digit_sequences(2, 4, 10), {"conv_transpose", "slice_by_index"}),
    "3d": (Many(nn.ConvTranspose3d(2, 3, 2, stride=2, padding=1)),
           lambda: digit_images(2, 4, 6).reshape(2, 2, 2, 6, 6)[:, :, :, :4], {"conv_transpose"}),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CONV_T))
def test_conv_transpose_matches_torch(case, target, precision, tmp_path):
    module, make_input, ops = CONV_T[case]
    x = np.ascontiguousarray(make_input(), dtype=np.float32)
    _check_torch(module, x, "conv_transpose", tmp_path, target, precision)
    assert ops <= set(load_program(tmp_path / "m.mlpackage").op_types)


def _torch_full_then_window(x, w, stride, begin, size):
    full = Fn.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride).numpy()
    extra = [(0, max(begin + size - n, 0)) for n in full.shape[2:]]
    full = np.pad(full, [(0, 0), (0, 0)] + extra)
    return full[:, :, begin : begin + size, begin : begin + size]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_conv_transpose_same_and_output_shape(target, precision, tmp_path):
    x = digit_images(2, 3, 8)
    w = np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32) * 0.3
    got = _run_builder(lambda v: [mb.conv_transpose(x=v, weight=w, pad_type="same", strides=[2, 2]),
                                  mb.conv_transpose(x=v, weight=w, pad_type="same"),
                                  mb.conv_transpose(x=v, weight=w, strides=[2, 2], output_shape=[2, 4, 18, 18])],
                       x, "conv_transpose", tmp_path, target, precision)
    rel = OP_REL[precision]
    assert_close(got[0], _torch_full_then_window(x, w, 2, 0, 16), rel, "same, stride 2: out 16 of full 17, begin 0")
    assert_close(got[1], _torch_full_then_window(x, w, 1, 1, 8), rel, "same, stride 1: out 8 of full 10, begin 1")
    assert_close(got[2], _torch_full_then_window(x, w, 2, 0, 18), rel, "output_shape past the full result reads zeros")


def test_conv_transpose_rejects_unknown_pad_type():
    from compress.export.coreml.mil.ops import OPS, Args

    x, w = np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 2, 2), np.float32)
    args = Args({"x": [x], "weight": [w], "pad_type": ["same_lower"]}, "conv_transpose", "op 'ct'")
    with pytest.raises(InputError, match="conv_transpose.*same_lower"):
        OPS["conv_transpose"](args)


def test_upsample_bilinear_rejects_align_corners_with_half_pixel():
    from compress.export.coreml.mil.ops import OPS, Args

    args = Args({"x": [np.zeros((1, 1, 2, 2), np.float32)], "align_corners": [True], "half_pixel_centers": [True]},
                "upsample_bilinear", "op 'u'")
    with pytest.raises(InputError, match="upsample_bilinear.*half_pixel_centers"):
        OPS["upsample_bilinear"](args)
