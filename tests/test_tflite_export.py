"""TFLite target: litert-torch conversion of each variant, parity in the LiteRT runtime on real digits.

Two small students (an MLP and a conv+batchnorm+relu+pool+linear CNN) are trained for a second or two on
sklearn's 8x8 digits (pixels /16, then standardized with the training split's mean/std); every variant is
exported once and compared with the torch logits on the held-out split.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.tflite.runner import TOLERANCES, open_tflite  # noqa: E402
from compress.export.common import ModelInfo  # noqa: E402
from compress.export.tflite.convert import VARIANTS, export, int8_reference, read_metadata  # noqa: E402

LABELS = [str(d) for d in range(10)]
CONVERSION_SECONDS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def digits():
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3  # some border pixels are always 0
    norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return {
        "x_train": norm(x_train),
        "y_train": y_train,
        "x_test": norm(x_test),
        "y_test": y_test,
        "normalization": {"scale": 1 / 16, "mean": mean.tolist(), "std": std.tolist()},
    }


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


SHAPES = {"mlp": (64,), "cnn": (1, 8, 8)}


def _train(kind: str, digits) -> nn.Module:
    torch.manual_seed(0)
    model = MLP() if kind == "mlp" else CNN()
    x = torch.from_numpy(digits["x_train"]).reshape(-1, *SHAPES[kind])
    y = torch.from_numpy(digits["y_train"]).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(25):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def student(request, digits, tmp_path_factory):
    """A trained student, its torch logits on the test split, and its four TFLite exports."""
    kind = request.param
    model = _train(kind, digits)
    x_test = digits["x_test"].reshape(-1, *SHAPES[kind])
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test)).numpy()
    info = ModelInfo(name=f"digits-{kind}", labels=LABELS, normalization=digits["normalization"], input_kind="image")
    calibration = digits["x_train"][:200].reshape(-1, *SHAPES[kind])  # transfer-set samples
    out = tmp_path_factory.mktemp(f"tflite-{kind}")
    paths = {}
    for variant in VARIANTS:
        start = time.perf_counter()
        paths[variant] = export(
            model, torch.from_numpy(x_test[:4]), out / f"{kind}-{variant}.tflite", info,
            variant=variant, calibration=calibration if variant == "int8" else None,
        )
        CONVERSION_SECONDS[(kind, variant)] = time.perf_counter() - start
    return {"kind": kind, "model": model, "x": x_test, "y": digits["y_test"], "logits": logits,
            "info": info, "paths": paths, "calibration": calibration}


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_torch(student, variant):
    runner = open_tflite(student["paths"][variant], threads=1)
    assert runner.engine.startswith("LiteRT ") and runner.engine.endswith("(XNNPACK, 1 thread)"), runner.engine
    assert runner.threads == 1 and runner.measured
    scores = runner.predict(student["x"])
    ref = student["logits"]
    assert scores.dtype == np.float32 and scores.shape == ref.shape
    tol = TOLERANCES[variant]
    diff = np.abs(scores - ref)
    max_abs, p99 = float(diff.max()), float(np.quantile(diff, 0.99))
    agree = float((scores.argmax(1) == ref.argmax(1)).mean())
    print(f"{student['kind']} {variant}: max|diff|={max_abs:.3g} p99={p99:.3g} top1-agree={agree:.4f} "
          f"convert={CONVERSION_SECONDS[(student['kind'], variant)]:.2f}s")
    if tol.get("max_abs") is not None:
        assert max_abs <= tol["max_abs"], f"{variant}: max abs logit diff {max_abs} > {tol['max_abs']}"
    if tol.get("max_rel") is not None:  # fp32: relative to the logits' size
        bound = tol["max_rel"] * max(1.0, float(np.abs(ref).max()))
        assert max_abs <= bound, f"{variant}: max abs logit diff {max_abs} > {bound}"
    if tol.get("p99_abs") is not None:  # fp32: the one max-abs bound covers it
        assert p99 <= tol["p99_abs"], f"{variant}: p99 abs logit diff {p99} > {tol['p99_abs']}"
    top1 = tol.get("top1", 1.0)  # fp32 (relative 1e-4): every top-1 agrees on these well-separated logits
    assert agree >= top1, f"{variant}: top-1 agreement {agree} < {top1}"


def test_int8_matches_torch_int8_reference(student, digits):
    """Conversion error alone: the .tflite against PyTorch's own PT2E int8 graph (same calibration)."""
    from ai_edge_litert.interpreter import Interpreter

    reference = int8_reference(student["model"], torch.from_numpy(student["x"][:1]), student["calibration"])
    with torch.no_grad():
        fq = np.concatenate([reference(torch.from_numpy(row[None])).numpy() for row in student["x"]])
    scores = open_tflite(student["paths"]["int8"]).predict(student["x"])
    step = Interpreter(model_path=str(student["paths"]["int8"])).get_output_details()[0]["quantization"][0]
    steps = float(np.abs(scores - fq).max() / step)
    print(f"{student['kind']} int8 vs torch PT2E reference: {steps:.2f} output steps (step {step:.3g})")
    assert steps <= TOLERANCES["int8"]["reference_steps"]
    assert (scores.argmax(1) == fq.argmax(1)).mean() >= 0.99


def test_int8_accuracy_close_to_fp32(student):
    y = student["y"]
    fp32 = (open_tflite(student["paths"]["fp32"]).predict(student["x"]).argmax(1) == y).mean()
    int8 = (open_tflite(student["paths"]["int8"]).predict(student["x"]).argmax(1) == y).mean()
    print(f"{student['kind']}: accuracy fp32={fp32:.4f} int8={int8:.4f}")
    assert fp32 > 0.9
    assert int8 >= fp32 - 0.01  # within 1 point (≈5 of 540 test digits)


def test_int8_model_has_int8_io_and_runner_handles_it(student):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(student["paths"]["int8"]))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0
    assert list(inp["shape"]) == [1, *SHAPES[student["kind"]]]  # fixed batch of 1
    # float in, float out through the runner, any batch size, XNNPACK on or off
    x = student["x"][:7]
    with_xnnpack = open_tflite(student["paths"]["int8"], xnnpack=True, threads=2)
    without = open_tflite(student["paths"]["int8"], xnnpack=False)
    assert with_xnnpack.engine.endswith("(XNNPACK, 2 threads)") and "builtin kernels" in without.engine
    a, b = with_xnnpack.predict(x), without.predict(x)
    assert a.dtype == np.float32 and a.shape == (7, 10)
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() <= out["quantization"][0] * 2 + 1e-6  # kernels may round one step apart


def test_other_variants_keep_float_io(student):
    from ai_edge_litert.interpreter import Interpreter

    for variant in ("fp32", "fp16", "int8-dynamic"):
        interp = Interpreter(model_path=str(student["paths"][variant]))
        assert interp.get_input_details()[0]["dtype"] == np.float32
        assert interp.get_output_details()[0]["dtype"] == np.float32


def test_variant_sizes(student):
    sizes = {v: p.stat().st_size for v, p in student["paths"].items()}
    print(student["kind"], sizes)
    assert sizes["fp16"] < sizes["fp32"]
    assert sizes["int8-dynamic"] < sizes["fp16"]
    assert sizes["int8"] < sizes["fp32"]


def test_metadata_round_trip(student):
    info = student["info"]
    for variant, path in student["paths"].items():
        meta = read_metadata(path)
        assert meta["labels"] == LABELS
        assert meta["compress_info"] == info.metadata()
        assert meta["min_runtime_version"]  # the converter's own entry survives
        # the model with metadata still loads and runs
    assert open_tflite(student["paths"]["fp32"]).predict(student["x"][:2]).shape == (2, 10)


def test_written_atomically_no_leftovers(student):
    folder = student["paths"]["fp32"].parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in student["paths"].values())


# --- clear errors -----------------------------------------------------------------------------------


def _info():
    return ModelInfo(name="m", labels=["a", "b"])


def test_unknown_variant_lists_supported(tmp_path):
    with pytest.raises(InputError, match="int8-dynamic") as err:
        export(nn.Linear(4, 2).eval(), torch.zeros(1, 4), tmp_path / "m.tflite", _info(), variant="int4")
    assert "int4" in str(err.value) and "fp16" in str(err.value)
    assert not (tmp_path / "m.tflite").exists()


def test_int8_without_calibration(tmp_path):
    with pytest.raises(InputError, match="calibration"):
        export(nn.Linear(4, 2).eval(), torch.zeros(1, 4), tmp_path / "m.tflite", _info(), variant="int8")


def test_int8_calibration_wrong_shape(tmp_path):
    with pytest.raises(InputError, match=r"calibration: expected an array of shape \(N, 4\)"):
        export(nn.Linear(4, 2).eval(), torch.zeros(1, 4), tmp_path / "m.tflite", _info(),
               variant="int8", calibration=np.zeros((10, 5), np.float32))


class _Cumprod(nn.Module):
    def forward(self, x):
        return torch.cumprod(x, 1)


def test_unconvertible_op_names_op_and_target(tmp_path):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"old")
    with pytest.raises(InputError) as err:
        export(_Cumprod().eval(), torch.rand(1, 4), target, _info())
    msg = str(err.value)
    assert "cumprod" in msg and "tflite" in msg and "\n" not in msg
    assert target.read_bytes() == b"old"  # failed export leaves the old file in place


def test_open_tflite_errors(tmp_path):
    with pytest.raises(InputError, match="no such"):
        open_tflite(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(InputError, match="not a loadable TFLite model"):
        open_tflite(bad)


def test_export_keeps_training_mode_and_restores(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    export(model, torch.rand(3, 4), tmp_path / "m.tflite", _info())
    assert model.training  # restored
    runner = open_tflite(tmp_path / "m.tflite")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(runner.predict(x) - ref).max() <= TOLERANCES["fp32"]["max_rel"] * max(1.0, float(np.abs(ref).max()))
