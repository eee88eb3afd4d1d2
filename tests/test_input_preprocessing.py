"""Preprocessing inside the exported model: the app feeds raw 8-bit pixels, the file normalizes them.

On real 8-bit images (scikit-learn's digits as 8-bit grayscale, a colourized 16x16 RGB version with
per-channel mean/std, and MNIST when the shared data set is present), a small CNN trained for a few seconds
on the normalized images is exported to every target with ``ModelInfo.preprocessing`` set. Each file must
declare the raw-pixel input (uint8 for ONNX and TFLite, an image for Core ML), and the raw pixels fed
straight through the runtime's own API (onnxruntime, the LiteRT interpreter, Core ML's MIL program via the
reference evaluator) must give the torch student's logits on the normalized images within the target's
tolerance. The runners keep their contract: normalized float32 in gives the same scores as the raw pixels.
"""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from compress.core import metrics
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.preprocess import check, normalize, runner_input, to_raw
from compress.export.registry import TARGETS, export_options, tolerance_for, variant_name
from tests.conftest import require_mnist

LABELS = [str(i) for i in range(10)]
EVAL = 200  # evaluation images per data set (the MIL evaluator runs one image at a time)


def _preprocessing(raw: np.ndarray, channels: str) -> dict:
    """What the data side records for 8-bit images: scale 1/255 and per-channel training statistics."""
    f = raw.astype(np.float64) / 255
    return {"input": "uint8", "layout": "NCHW", "channels": channels, "scale": 1 / 255,
            "mean": f.mean(axis=(0, 2, 3)).tolist(), "std": f.std(axis=(0, 2, 3)).tolist()}


def _digits_gray():
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images * 15).astype(np.uint8)[:, None]  # 0..16 -> 0..240: real 8-bit grayscale images
    return raw, d.target.astype(np.int64), _preprocessing(raw, "L")


def _digits_rgb():
    """Each digit colourized with its own foreground/background colour, upsampled to 16x16."""
    raw, y, _ = _digits_gray()
    rng = np.random.default_rng(0)
    fg = rng.integers(128, 256, (len(raw), 3, 1, 1))
    bg = rng.integers(0, 100, (len(raw), 3, 1, 1))
    alpha = raw.astype(np.float64) / 255
    rgb = np.rint(alpha * fg + (1 - alpha) * bg).astype(np.uint8)
    rgb = rgb.repeat(2, axis=2).repeat(2, axis=3)
    return rgb, y, _preprocessing(rgb, "RGB")


def _mnist():
    from compress.data import read_idx

    folder = require_mnist()
    raw = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:2000, None]
    y = read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:2000].astype(np.int64)
    return raw.astype(np.uint8), y, _preprocessing(raw, "L")


def _cnn(channels: int, size: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * (size // 4) ** 2, 10))


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, seconds: float = 3.0) -> nn.Module:
    """A few seconds of Adam on the normalized images: a real, not random, student."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt, start = torch.from_numpy(x), torch.from_numpy(y), time.perf_counter()
    model.train()
    for _ in range(10):
        for i in torch.randperm(len(xt)).split(64):
            loss = nn.functional.cross_entropy(model(xt[i]), yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.perf_counter() - start > seconds:
            break
    return model.eval()


LOADERS = {"digits-gray": _digits_gray, "digits-rgb": _digits_rgb, "mnist": _mnist}
_CACHE: dict = {}


@pytest.fixture(params=list(LOADERS), scope="module")
def case(request):
    """(name, raw train, raw eval, preprocessing, student, torch logits on the normalized eval images)."""
    return _case(request.param)


def _case(name: str):
    if name not in _CACHE:
        raw, y, pre = LOADERS[name]()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(raw))
        train, held = order[:-EVAL], order[-EVAL:]
        torch.manual_seed(0)
        model = _train(_cnn(raw.shape[1], raw.shape[2]), normalize(raw[train], pre), y[train])
        with torch.no_grad():
            ref = model(torch.from_numpy(normalize(raw[held], pre))).numpy()
        assert metrics.accuracy(ref, y[held]) > 0.8, f"{name}: the student did not train"
        _CACHE[name] = (name, raw[train], raw[held], pre, model, ref)
    return _CACHE[name]


def test_to_raw_inverts_the_normalization_of_real_8bit_images_exactly():
    for loader in (_digits_gray, _digits_rgb):
        raw, _, pre = loader()
        x = normalize(raw, pre)
        assert x.dtype == np.float32
        assert np.array_equal(to_raw(x, pre), raw)
        assert np.array_equal(to_raw(torch.from_numpy(x), pre), raw)
        assert np.array_equal(runner_input(raw, pre), raw)  # uint8 pixels go through as they are
        assert runner_input(x, {}).dtype == np.float32  # no preprocessing: float32 as before


def test_bad_preprocessing_is_one_line_naming_the_key():
    _, _, pre = _digits_gray()
    for bad, key in [({**pre, "channels": "RGB"}, "preprocessing.channels"), ({**pre, "layout": "NHWC"}, "layout"),
                     ({**pre, "std": [0.0]}, "std > 0"), ({**pre, "input": "float32"}, "preprocessing.input")]:
        with pytest.raises(InputError, match=key) as err:
            check(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"expected \(N, 1, H, W\)"):
        check(pre, (1, 64))


def _export(target: str, scheme: str, case, tmp_path, **given):
    name, raw_train, _, pre, model, _ = case
    options = export_options(target, scheme, **given)
    info = ModelInfo(name=name, labels=LABELS, preprocessing=pre)
    path = tmp_path / f"{target}-{scheme}{TARGETS[target].suffix}"
    example = torch.from_numpy(normalize(raw_train[:1], pre))
    calibration = normalize(raw_train[:200], pre)
    TARGETS[target].export(model, example, path, info, calibration=calibration, **options)
    return path, variant_name(target, options)


def _check(target: str, variant: str, path, case, direct: np.ndarray) -> dict:
    """Direct-runtime scores on raw pixels against torch; the runner on normalized vs raw input."""
    _, _, raw_eval, pre, _, ref = case
    result = metrics.parity(ref, direct, tolerance_for(target, variant))
    assert result["passed"], f"{target}/{variant}: {metrics.describe_parity(result)}"
    runner = TARGETS[target].open(path)
    from_normalized, from_raw = runner.predict(normalize(raw_eval, pre)), runner.predict(raw_eval)
    assert np.array_equal(from_normalized, from_raw)
    assert metrics.parity(ref, from_raw, tolerance_for(target, variant))["passed"]
    info = TARGETS[target].describe_io(path)["inputs"][0]
    assert info["preprocessing"]["mean"] == pytest.approx(pre["mean"])
    return result


@pytest.mark.parametrize("scheme", ["none", "int8"])
def test_onnx_takes_uint8_pixels(case, tmp_path, scheme):
    import onnx
    import onnxruntime as ort

    path, variant = _export("onnx", scheme, case, tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert _opening_ops(onnx.load(str(path)).graph) == ["Cast", "Mul", "Sub", "Div"]  # in float, before any Q/DQ
    direct = session.run(None, {session.get_inputs()[0].name: case[2]})[0]
    _check("onnx", variant, path, case, direct)
    emulated = _load_emulated("onnx")  # the ARM64 emulator's self-contained runner, on the host's runtime
    assert np.allclose(emulated.run(str(path), normalize(case[2], case[3]), 1)[0], direct, atol=1e-5)


def _opening_ops(graph) -> list[str]:
    """The ops from the graph input while each one reads only the previous one (and constants)."""
    tensor, ops = graph.input[0].name, []
    while True:
        readers = [n for n in graph.node if tensor in n.input]
        if len(readers) != 1 or readers[0].op_type in ("QuantizeLinear", "Conv", "Gemm", "MatMul"):
            return ops
        ops.append(readers[0].op_type)
        tensor = readers[0].output[0]


def _litert_scores(path, raw: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (0.0, 0)
    rows = []
    for image in raw:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        rows.append((y - zero) * scale if scale else y)
    return np.concatenate(rows)


@pytest.mark.parametrize("scheme", ["none", "int8"])
def test_tflite_takes_uint8_pixels(case, tmp_path, scheme):
    from compress.export.tflite.convert import read_metadata

    path, variant = _export("tflite", scheme, case, tmp_path)
    direct = _litert_scores(path, case[2])
    _check("tflite", variant, path, case, direct)
    recorded = json.loads(read_metadata(path)["compress_info"]["preprocessing"])
    assert recorded == case[3]  # the normalization is recorded in the file's metadata
    emulated = _load_emulated("tflite")
    assert np.allclose(emulated.run(str(path), case[2], 1)[0], direct, atol=1e-5)


@pytest.mark.parametrize("scheme, given", [("none", {"precision": "fp32"}), ("fp16", {}),
                                           ("int8", {"deployment_target": "iOS17"})])
def test_coreml_takes_an_image(case, tmp_path, scheme, given):
    from compress.export.coreml.mil.evaluator import load_program

    path, variant = _export("coreml", scheme, case, tmp_path, **given)
    program = load_program(path)
    (spec_input,) = program.spec.description.input
    assert spec_input.type.WhichOneof("Type") == "imageType"
    assert program.image_input["color_space"] == ("RGB" if case[3]["channels"] == "RGB" else "GRAYSCALE")
    scaled, biased = [op for op in program._ops if op.type != "const"][:2]  # the image's scale and bias ops
    assert (scaled.type, scaled.name, biased.type, biased.name) == ("mul", "input__scaled__", "add", "input__biased__")
    assert biased.bindings["x"] == [("name", "input__scaled__")]  # in float even for int8: no quantize between
    raw = case[2].astype(np.float32)  # what Core ML makes of the pixel buffer: values 0..255 per channel
    direct = program.evaluate({"input": raw})[program.probabilities_name]
    _check("coreml", variant, path, case, direct)


def test_coreml_tensor_option_takes_float_pixel_values(case, tmp_path):
    from compress.export.coreml.mil.evaluator import load_program

    path, variant = _export("coreml", "none", case, tmp_path, precision="fp32", input_type="tensor")
    program = load_program(path)
    (spec_input,) = program.spec.description.input
    assert spec_input.type.WhichOneof("Type") == "multiArrayType" and program.image_input is None
    assert program.inputs["input"][0] == np.float32 and program.preprocessing["input_type"] == "tensor"
    direct = program.evaluate({"input": case[2].astype(np.float32)})[program.probabilities_name]
    _check("coreml", variant, path, case, direct)


def test_coreml_channels_any_fall_back_to_a_tensor_input(tmp_path):
    """Two channels (the digit and its negative) are no image Core ML knows: a float32 pixel-value tensor."""
    from compress.export.coreml.mil.evaluator import load_program

    gray, _, _ = _digits_gray()
    raw = np.concatenate([gray, 255 - gray], axis=1)
    pre = _preprocessing(raw, "any")
    model = _cnn(2, 8).eval()
    x = normalize(raw[:100], pre)
    path = tmp_path / "any.mlpackage"
    info = ModelInfo(name="any", labels=LABELS, preprocessing=pre)
    TARGETS["coreml"].export(model, torch.from_numpy(x[:1]), path, info, **export_options("coreml", "none", precision="fp32"))
    program = load_program(path)
    assert program.image_input is None and program.preprocessing["input_type"] == "tensor"
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    direct = program.evaluate({"input": raw[:100].astype(np.float32)})[program.probabilities_name]
    assert metrics.parity(ref, direct, tolerance_for("coreml", "fp32"))["passed"]


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_int8_fallback_hooks_name_the_students_layers(tmp_path, target):
    """The float fallback ranks the student's own layers (not the preprocessing, already float) and keeps
    one in float by the name it ranked, on a file that takes raw pixels."""
    case = _case("digits-rgb")
    name, raw_train, raw_eval, pre, model, ref = case
    backend = TARGETS[target]
    options = export_options(target, "int8", **({"deployment_target": "iOS17"} if target == "coreml" else {}))
    info = ModelInfo(name=name, labels=LABELS, preprocessing=pre)
    example, calibration = torch.from_numpy(normalize(raw_train[:1], pre)), normalize(raw_train[:200], pre)
    reference = backend.int8_fallback.reference(model, example, tmp_path / f"ref{backend.suffix}", info, options)
    int8 = backend.export(model, example, tmp_path / f"int8{backend.suffix}", info, calibration=calibration, **options)
    rows = [r for r in backend.layer_errors(reference, int8, calibration[:64], model=model) if r.get("keepable", True)]
    nodes = [r["node"] for r in rows]
    assert len(nodes) == 3 and not any("preprocess" in n or n.startswith(("input__", "node_div")) for n in nodes)
    if target == "tflite":
        assert sorted(nodes) == ["0", "4", "8"]  # the student's own module names, not "model.0"
    done = backend.int8_fallback.convert(model, example, reference, tmp_path / f"kept{backend.suffix}", info,
                                         calibration, nodes[:1], options)
    assert done["float_layers"] == nodes[:1]
    scores = backend.open(done["path"]).predict(raw_eval)
    assert metrics.parity(ref, scores, tolerance_for(target, variant_name(target, options)))["passed"]


def test_a_model_without_preprocessing_is_unchanged(tmp_path):
    raw, y, pre = _digits_gray()
    x = normalize(raw, pre)
    model = _cnn(1, 8).eval()
    info = ModelInfo(name="plain", labels=LABELS)
    expected = {"onnx": "float32", "tflite": "float32", "coreml": "float32"}
    for target in TARGETS:
        if target not in expected:
            continue
        path = tmp_path / f"plain{TARGETS[target].suffix}"
        TARGETS[target].export(model, torch.from_numpy(x[:1]), path, info, **export_options(target, "none"))
        described = TARGETS[target].describe_io(path)["inputs"][0]
        assert described.get("dtype") == expected[target] and "preprocessing" not in described
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:50])).numpy()
        variant = variant_name(target, export_options(target, "none"))
        assert metrics.parity(ref, TARGETS[target].open(path).predict(x[:50]), tolerance_for(target, variant))["passed"]
    assert json.loads(info.metadata()["preprocessing"]) == {}


def test_tflite_qat_export_takes_uint8_pixels(tmp_path):
    """QAT: the fine-tuned int8 graph behind the float preprocessing, as PTQ int8 does."""
    from compress.export.tflite import qat

    raw, y, pre = _digits_gray()
    x = normalize(raw, pre)
    # no BatchNorm: convert_pt2e of a QAT conv+BN pattern alone takes ~15 s here
    model = _train(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(128, 10)), x[:1500], y[:1500], seconds=2)
    prepared = qat.prepare_qat(model, torch.from_numpy(x[:2]))
    with torch.no_grad():
        prepared(torch.from_numpy(x[:300]))  # observers from real ranges (no fine-tuning needed here)
    converted = qat.convert_qat(prepared)
    info = ModelInfo(name="qat", labels=LABELS, preprocessing=pre)
    path = qat.export_tflite(converted, torch.from_numpy(x[:1]), tmp_path / "qat.tflite", info)
    reference = qat.predict(converted, x[1500:1700])
    result = metrics.parity(reference, _litert_scores(path, raw[1500:1700]), tolerance_for("tflite", "int8"))
    assert result["passed"], metrics.describe_parity(result)


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_the_arm64_emulator_takes_normalized_or_raw_input(tmp_path, target):
    """The emulated runners (self-contained files) convert normalized input to pixels as the host runners do."""
    from compress.devices.arm64_emu import compare_with_host, status

    if status() is None:
        pytest.skip("ARM64 emulator not built: run `compress devices setup arm64-emu` (the README's test command does)")
    case = _case("digits-gray")
    path, _ = _export(target, "int8", case, tmp_path)
    for x in (normalize(case[2][:8], case[3]), case[2][:8]):
        assert compare_with_host(path, x)["bit_exact"]


def _load_emulated(target: str):
    spec = importlib.util.spec_from_file_location(f"emulated_{target}", TARGETS[target].emulated_runner)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
