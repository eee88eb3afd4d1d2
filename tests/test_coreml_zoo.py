"""Model-zoo matrix for the numpy MIL reference evaluator: standard mobile architectures (``tests/zoo_models.py``)
x {fp32, fp16} x {iOS16, iOS18} x {none, int8 weights, palettize-4, int4 per-block}.

Each cell converts the (briefly trained) torch model to an ML Program, compresses the converted ``MLModel``
with ``coremltools.optimize.coreml`` (asserting ``constexpr_*`` ops really appear), saves it and runs the saved
package in the evaluator on ``N_INPUTS`` real inputs (``digit_images`` / ``digit_sequences``: the digit
helpers, always available; FSDD is not used). Checks:

* evaluator: logits vs torch's on the same inputs within ``MAX_REL[variant]``; a compressed package vs the
  same package after coremltools' ``decompress_weights`` within ``OP_REL`` (the ``constexpr_*`` ops against
  coremltools' own numpy);
* compression: top-1 agreement with torch is measured and recorded against the variant's ``top1`` in
  ``TOLERANCES``, not asserted: it is a property of the compressed weights on each model (4-bit palettes flip
  up to a fifth of the U-Net's near-tie inputs), which the pipeline's own parity check reports for a
  user's model; this matrix tests the evaluator.

The full matrix is ``heavy`` (``python -m pytest -n 0 -m heavy tests/test_coreml_zoo.py -s`` prints the measured
table and writes it to ``bench/results/coreml_zoo.md``); the light slice (every architecture at
fp32/iOS18/none and fp16/iOS16/palettize-4) runs by default. ``test_validate_cli_against_onnx`` runs
``compress validate`` on an image, a recurrent and the transformer model against their ONNX export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from compress.export.coreml.mil.evaluator import load_program  # noqa: E402
from compress.export.coreml.tolerances import MAX_REL, TOLERANCES  # noqa: E402
from tests.mil_cases import OP_REL, rel_error, torch_outputs  # noqa: E402
from tests.zoo_models import EXPORTED, TEST_INPUTS, ZOO, inputs_and_labels, trained  # noqa: E402

N_INPUTS = TEST_INPUTS  # 128 real inputs: one top-1 flip is 0.8%, within a 0.99 bound
PRECISIONS = ("fp32", "fp16")
TARGETS = ("iOS16", "iOS18")
COMPRESSIONS = ("none", "int8", "palettize-4", "int4-block")
VARIANT = {"int8": "int8-weights", "palettize-4": "palettize-4", "int4-block": "int4-block"}
WEIGHT_THRESHOLD = 32  # elements: every conv/linear/recurrent weight of these small models gets compressed
RESULTS: dict[tuple, dict] = {}  # (arch, precision, target, compression) -> measured


def convert(arch: str, precision: str, target: str):
    """The trained zoo model as an ``MLModel`` (not loaded: there is no Core ML runtime here)."""
    import coremltools as ct

    module, shape, _ = trained(arch)
    example = torch.from_numpy(inputs_and_labels(_kind(arch), 1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch in EXPORTED:
            source = torch.export.export(module, (example,)).run_decompositions({})
            inputs = None
        else:
            source = torch.jit.trace(module, (example,), check_trace=False)
            inputs = [ct.TensorType(name="x0", shape=shape)]
        ml = ct.convert(source, inputs=inputs, convert_to="mlprogram",
                        minimum_deployment_target=getattr(ct.target, target),
                        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                        skip_model_load=True)
    return ml


def compress_model(ml, compression: str):
    """``coremltools.optimize.coreml`` on the converted model: int8 per-channel, 4-bit k-means palette, or
    int4 with one scale per block of 32 input channels."""
    from coremltools.optimize import coreml as cto

    if compression == "none":
        return ml
    if compression == "palettize-4":
        cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=WEIGHT_THRESHOLD)
        return cto.palettize_weights(ml, cto.OptimizationConfig(global_config=cfg))
    if compression == "int8":
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                          weight_threshold=WEIGHT_THRESHOLD)
    else:
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                          block_size=32, weight_threshold=WEIGHT_THRESHOLD)
    return cto.linear_quantize_weights(ml, cto.OptimizationConfig(global_config=cfg))


def _kind(arch: str) -> str:
    return trained(arch)[2]


def run_cell(arch: str, precision: str, target: str, compression: str, tmp_path: Path) -> dict:
    """Convert, compress, save, evaluate; assert the bounds; return what was measured.

    The evaluator's checks: its logits vs torch's within ``MAX_REL[variant]``, and a compressed package vs the
    same package after coremltools' own ``decompress_weights`` within ``OP_REL`` (the ``constexpr_*`` ops
    against coremltools' numpy). Top-1 agreement with torch is recorded with the documented bound."""
    from coremltools.optimize.coreml import decompress_weights

    if compression == "int4-block" and target == "iOS16":
        pytest.skip("int4 per-block weights (constexpr_blockwise_shift_scale) need iOS18; iOS16 has no such op")
    variant = VARIANT.get(compression, precision)
    module = trained(arch)[0]
    x, _ = inputs_and_labels(_kind(arch), N_INPUTS)
    path, dense = (tmp_path / f"{arch}-{precision}-{target}-{compression}{suffix}.mlpackage" for suffix in ("", "-dense"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = compress_model(convert(arch, precision, target), compression)
        ml.save(str(path))
        if compression != "none":
            decompress_weights(ml).save(str(dense))
    program = load_program(path)
    got = program.scores(x)
    want = torch_outputs(module, x)[0]
    measured = {"variant": variant, "max_rel": rel_error(got, want),
                "top1": float(np.mean(got.argmax(1) == want.argmax(1))), "bound": MAX_REL[variant], "vs_dense": None,
                "top1_bound": TOLERANCES[variant].get("top1")}  # fp32: bounded by max_rel alone
    RESULTS[(arch, precision, target, compression)] = measured
    if compression != "none":
        assert any(t.startswith("constexpr_") for t in program.op_types), \
            f"{compression}: no constexpr_* op in the compressed program: {sorted(set(program.op_types))}"
        measured["vs_dense"] = rel_error(got, load_program(dense).scores(x))
        assert measured["vs_dense"] <= OP_REL[precision], \
            f"{arch} {precision} {target} {compression}: compressed vs decompress_weights {measured['vs_dense']:.3g}"
    assert measured["max_rel"] <= MAX_REL[variant], \
        f"{arch} {precision} {target} {compression}: max_rel {measured['max_rel']:.3g} > {MAX_REL[variant]:g}"
    return measured


def _table() -> str:
    lines = ["| architecture | precision | target | compression | variant | max_rel vs torch | bound | top-1 vs torch "
             "(documented bound) | vs decompress_weights |", "|---|---|---|---|---|---|---|---|---|"]
    for (arch, precision, target, compression), m in sorted(RESULTS.items()):
        below = "" if m["top1_bound"] is None or m["top1"] >= m["top1_bound"] else ", below"
        dense = "-" if m["vs_dense"] is None else format(m["vs_dense"], ".1e")
        lines.append(f"| {arch} | {precision} | {target} | {compression} | {m['variant']} | {m['max_rel']:.2e} | "
                     f"{m['bound']:g} | {m['top1']:.3f} ({'-' if m['top1_bound'] is None else format(m['top1_bound'], 'g')}{below}) | {dense} |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def results_table():
    yield
    if RESULTS:
        print("\nmeasured max_rel per cell (evaluator vs torch, %d real inputs):\n%s" % (N_INPUTS, _table()))
    full = len(ZOO) * len(PRECISIONS) * len(TARGETS) * (len(COMPRESSIONS) - 1) + len(ZOO) * len(PRECISIONS)
    if len(RESULTS) >= full:  # the whole matrix ran (heavy): keep the numbers
        out = Path(__file__).resolve().parents[1] / "bench" / "results" / "coreml_zoo.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Core ML model-zoo matrix: MIL reference evaluator vs torch\n\n"
                       f"`python -m pytest -n 0 -m heavy tests/test_coreml_zoo.py -s`; max_rel = max |evaluator - torch| / "
                       f"max(1, max |torch|) over {N_INPUTS} real inputs.\n\n" + _table() + "\n")


# default slice: every architecture plain at fp32/iOS18 and palettized to 4 bits at fp16/iOS16
LIGHT = [(arch, "fp32", "iOS18", "none") for arch in ZOO] + [(arch, "fp16", "iOS16", "palettize-4") for arch in ZOO]
MATRIX = [(a, p, t, c) for a in ZOO for p in PRECISIONS for t in TARGETS for c in COMPRESSIONS]


@pytest.mark.parametrize("arch,precision,target,compression", LIGHT, ids=["-".join(c) for c in LIGHT])
def test_zoo_light(arch, precision, target, compression, tmp_path):
    run_cell(arch, precision, target, compression, tmp_path)


@pytest.mark.heavy
@pytest.mark.parametrize("arch,precision,target,compression", MATRIX, ids=["-".join(c) for c in MATRIX])
def test_zoo_matrix(arch, precision, target, compression, tmp_path):
    run_cell(arch, precision, target, compression, tmp_path)


# --- compress validate on zoo models against their ONNX export ----------------------------------------------

def _write_npz(arch: str, path: Path) -> Path:
    """Real inputs and labels: 64 training samples (only for the normalization statistics) and N_INPUTS
    test samples, the same inputs as the matrix."""
    kind = _kind(arch)
    x_test, y_test = inputs_and_labels(kind, N_INPUTS)
    x_train, y_train = inputs_and_labels(kind, 64, start=N_INPUTS)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             labels=np.array([str(i) for i in range(10)]))
    return path


def _export_onnx(arch: str, path: Path) -> Path:
    module, shape, _ = trained(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    return path


@pytest.mark.parametrize("arch", ["mobilenet_v2", "lstm_kws", "transformer_encoder"])
def test_validate_cli_against_onnx(arch, tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.data import load_data

    precision = "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(arch, precision, "iOS18").save(str(tmp_path / "user.mlpackage"))
    onnx_path = _export_onnx(arch, tmp_path / "user.onnx")
    data = _write_npz(arch, tmp_path / "data.npz")
    module, shape, _ = trained(arch)
    normalized = load_data(str(data)).x_test.reshape(-1, *shape[1:])  # what validate feeds both models
    scale = max(1.0, float(np.abs(torch_outputs(module, normalized)[0]).max()))
    bound = MAX_REL[precision] * scale  # the relative bound as the absolute --max-logit-diff
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "user.mlpackage"), "--data", str(data),
                                      "--reference", str(onnx_path), "--max-logit-diff", f"{bound:g}",
                                      "--latency-runs", "1", "--json", "--quiet"])
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.stdout)
    par = next(r for r in report["rows"] if r["role"] == "student")["parity"]
    assert par is not None and par["passed"], par
    assert par["max_rel_diff"] <= MAX_REL[precision] and par["top1_agreement"] == 1.0, par
    print(f"\ncompress validate {arch}.mlpackage vs ONNX: max abs {par['max_abs_diff']:.2e}, relative "
          f"{par['max_rel_diff']:.2e}, top-1 {par['top1_agreement']:.3f} on {N_INPUTS} inputs")
    assert report["run"]["data"]["test"] == N_INPUTS
    if _kind(arch) == "sequence":  # the NPZ's (n, T, F) arrays load as (n, 1, T, F): validate drops that axis
        assert any("without their one-channel axis" in note for note in report["notes"]), report["notes"]
