"""Process-wide state that exporters and report writers must leave exactly as they found it.

- Core ML int8 export sets options (``config``, ``activation_stats``) on coremltools' activation
  quantize/dequantize passes taken from ``PASS_REGISTRY``; where those passes are shared objects (older
  coremltools stored instances, ``register_generic_pass`` still does), the options must be put back after
  ``export`` returns or raises.
- ``export`` switches the model to eval mode for tracing; every submodule's own mode must come back.
- The HTML report draws with matplotlib without touching the global backend (``matplotlib.use``).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

ACT_PASSES = ("compression::insert_prefix_quantize_dequantize_pair", "compression::insert_suffix_quantize_dequantize_pair")
ALL_PASSES = ACT_PASSES + ("common::dequantize_quantize_pair_elimination",)


# ---------------------------------------------------------------------------------------------- Core ML


@pytest.fixture(scope="module")
def digits_rows():
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0  # (1797, 64)
    return x


@pytest.fixture(scope="module")
def tiny_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


@pytest.fixture()
def shared_passes(monkeypatch):
    """Make ``PASS_REGISTRY`` hand out one shared object per pass (as coremltools < 7 did for every pass, and
    as it still does for passes registered as instances), each with sentinel options set beforehand.

    Returns ``{name: (pass, snapshot of its attributes)}``; the registry entries are restored by monkeypatch."""
    pytest.importorskip("coremltools")
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    if platform.system() == "Darwin":
        pytest.skip("on macOS activation ranges come from Core ML itself; PASS_REGISTRY is not used")
    sentinel_config = cto.OptimizationConfig(
        global_config=cto.experimental.OpActivationLinearQuantizerConfig(mode="linear_symmetric"),
        op_name_configs={"sentinel_op": None},
    )
    sentinel_stats = {"sentinel": {"rmin": -123.0, "rmax": 456.0}}
    shared = {}
    for name in ALL_PASSES:
        p = PASS_REGISTRY[name]  # a fresh instance (coremltools >= 7) or the shared one
        monkeypatch.setitem(PASS_REGISTRY.passes, name, p)
        assert PASS_REGISTRY[name] is p  # from here on every caller gets this very object
        if name in ACT_PASSES:
            p.set_options([PassOption("config", sentinel_config)])
            p.set_options([PassOption("activation_stats", sentinel_stats)])
        shared[name] = (p, dict(vars(p)))
    shared["sentinels"] = (sentinel_config, sentinel_stats)
    return shared


def _assert_restored(shared):
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    sentinel_config, sentinel_stats = shared["sentinels"]
    for name in ALL_PASSES:
        p, before = shared[name]
        assert PASS_REGISTRY[name] is p
        after = vars(p)
        assert set(after) == set(before), name
        for key, value in before.items():
            assert after[key] is value, f"{name}.{key} not restored"
        if name in ACT_PASSES:
            assert p.config is sentinel_config
            assert p.activation_stats is sentinel_stats


def _export_int8(model, rows, path):
    import torch

    from compress.export.common.model_info import ModelInfo
    from compress.export.coreml.convert import export

    info = ModelInfo(name="m", labels=[str(i) for i in range(10)])
    return export(model, torch.from_numpy(rows[:1]), path, info, compression="int8", calibration=rows[:32],
                  minimum_deployment_target="iOS17")


def test_coreml_int8_export_restores_pass_options(shared_passes, tiny_model, digits_rows, tmp_path):
    out = _export_int8(tiny_model, digits_rows, tmp_path / "m.mlpackage")
    assert out.is_dir()
    _assert_restored(shared_passes)
    # the export did use activation quantization (the options were in effect while the passes ran)
    from compress.export.coreml.mil.evaluator import load_program

    assert any(op.type == "quantize" for op in load_program(out)._ops)


def test_coreml_int8_export_restores_pass_options_when_it_raises(shared_passes, tiny_model, digits_rows, tmp_path,
                                                                 monkeypatch):
    import coremltools.models.utils as model_utils

    seen = {}

    def boom(mlmodel, graph_passes, **kwargs):
        # raised after the options were set: they must be this export's, and still be undone
        for p in graph_passes:
            if hasattr(p, "activation_stats"):
                seen.setdefault("stats", []).append(p.activation_stats)
        raise RuntimeError("injected failure inside the graph passes")

    monkeypatch.setattr(model_utils, "_apply_graph_pass", boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        _export_int8(tiny_model, digits_rows, tmp_path / "m.mlpackage")
    sentinel_stats = shared_passes["sentinels"][1]
    assert len(seen["stats"]) == 2 and all(s is not sentinel_stats for s in seen["stats"])
    _assert_restored(shared_passes)
    assert not (tmp_path / "m.mlpackage").exists()


def test_coreml_int8_export_leaves_registry_untouched(tiny_model, digits_rows, tmp_path):
    """With coremltools' own registry (no monkeypatching): same entries afterwards, fresh passes unconfigured."""
    pytest.importorskip("coremltools")
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    before = dict(PASS_REGISTRY.passes)
    _export_int8(tiny_model, digits_rows, tmp_path / "m.mlpackage")
    assert PASS_REGISTRY.passes.keys() == before.keys()
    assert all(PASS_REGISTRY.passes[k] is v for k, v in before.items())
    for name in ACT_PASSES:
        p = PASS_REGISTRY[name]
        assert p.config is None and p.activation_stats is None


def test_coreml_export_restores_each_submodule_mode(digits_rows, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("coremltools")
    from compress.export.common.model_info import ModelInfo
    from compress.export.coreml.convert import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 10))
    model.train()
    model[2].eval()  # e.g. a frozen BatchNorm inside a model being fine-tuned
    modes = [m.training for m in model.modules()]
    export(model, torch.from_numpy(digits_rows[:1]), tmp_path / "m.mlpackage",
           ModelInfo(name="m", labels=[str(i) for i in range(10)]), precision="fp32")
    assert [m.training for m in model.modules()] == modes


# ---------------------------------------------------------------------------------------------- HTML report


def small_report() -> dict:
    """A hand-made ``compress.report/1`` dict with every drawn part: both scatter plots and the confusion matrix."""
    lat = {"p50": 0.02, "p90": 0.03, "batch": 1, "threads": 1, "runs": 5, "warmup": 2}
    rows = [
        {"model": "teacher ensemble", "role": "teacher", "runtime": "torch", "accuracy": 0.97,
         "agreement_with_teacher": 1.0, "params": 120_000, "macs": 240_000, "size_bytes": None,
         "latency_ms": {**lat, "p50": 0.4, "p90": 0.5}, "parity": None},
        {"model": "student", "role": "student", "runtime": "torch", "accuracy": 0.94,
         "agreement_with_teacher": 0.95, "params": 6_000, "macs": 12_000, "size_bytes": None,
         "latency_ms": lat, "parity": None},
        {"model": "student (onnx int8) $x$", "role": "student", "runtime": "onnxruntime 1.20", "accuracy": 0.93,
         "agreement_with_teacher": 0.94, "params": 6_000, "macs": 12_000, "size_bytes": 9_000,
         "latency_ms": {**lat, "p50": 0.01, "p90": 0.015}, "parity": {"max_abs_diff": 1e-3, "passed": True}},
    ]
    return {
        "schema": "compress.report/1", "tool": {"name": "compress", "version": "test"}, "passed": True,
        "run": {"name": "global-state", "target": "onnx", "student": "mlp", "threads": 1,
                "data": {"name": "digits", "train": 100, "test": 50, "labels": [str(i) for i in range(3)]}},
        "checks": [{"name": "parity", "passed": True, "detail": "ok"}],
        "comparison": {"timing_note": "same runtime", "same_runtime": True, "param_ratio": 20.0},
        "rows": rows,
        "confusion": {"reference": "teacher ensemble", "candidate": "student (onnx int8) $x$",
                      "labels": ["0", "1", "2"], "matrix": [[15, 1, 0], [0, 16, 2], [1, 0, 15]]},
    }


@pytest.fixture()
def svg_backend():
    """A distinctive process-wide backend for the test, put back afterwards."""
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.rcParams._get_backend_or_none()
    matplotlib.use("svg", force=True)
    yield matplotlib
    if before is None:  # backend was still unresolved: restore "auto" without resolving it
        matplotlib.rcParams._set("backend", matplotlib.rcsetup._auto_backend_sentinel)
    else:
        matplotlib.use(before, force=True)


def test_html_report_keeps_matplotlib_backend(svg_backend, tmp_path):
    from compress.devices import html_report

    assert svg_backend.get_backend().lower() == "svg"
    out = html_report.write(small_report(), tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    assert page.count("<svg") == 3  # latency, size, confusion
    assert svg_backend.get_backend().lower() == "svg"


def test_html_report_keeps_backend_unresolved(tmp_path):
    """In a fresh process that has not chosen a backend, writing a report does not choose one either."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        import matplotlib
        sys.path.insert(0, {str(tmp_path)!r})
        assert matplotlib.rcParams._get_backend_or_none() is None, "backend already resolved at start"
        from compress.devices import html_report
        from test_global_state_report import small_report
        html_report.write(small_report(), {str(tmp_path / "r.html")!r})
        assert matplotlib.rcParams._get_backend_or_none() is None, matplotlib.rcParams._get_backend_or_none()
        assert "matplotlib.pyplot" not in sys.modules
    """)
    # the report builder, importable in the child without importing the tests package
    import inspect

    (tmp_path / "test_global_state_report.py").write_text(inspect.getsource(small_report), encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
