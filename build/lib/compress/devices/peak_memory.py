"""Peak resident memory of loading and running a model in its runtime, measured in a fresh child process.

The parent (which has torch, the teachers and the data loaded) would pollute any in-process number, so a
child ``python -c`` imports only numpy, the runner and the runtime's Python package, records its resident
set, opens the model with the same runner and threads the validation uses, runs ``runs`` batch-1
predictions on real samples, and records the peak resident set.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, reset to the current RSS just before the load
(``echo 5 > /proc/self/clear_refs``), so the import's transient peaks do not hide the model's cost.
``getrusage(RUSAGE_SELF).ru_maxrss`` is not usable there: a child started with vfork+exec inherits the
parent's high-water mark into it. Elsewhere (macOS) the fallback is ru_maxrss before vs after.

``peak_memory_mb`` (the number budgets check) = peak after load + run - peak before load, in MiB: the
runtime's session/interpreter, its arenas and thread pools, the model's weights and the activations of a
batch-1 inference. Not included: the Python interpreter, numpy and the runtime's shared library as
imported (``baseline_mb``; on a device the app pays its own, different, version of those). ``process_peak_mb``
is the child's whole peak after the reset, for reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

INCLUDES = ("runtime session/interpreter, arenas and thread pools, model weights and batch-1 activations "
            "(peak RSS during load + {runs} runs minus RSS after importing numpy and {module}; a fresh "
            "child process, {threads} thread(s))")

_CHILD = r"""
import importlib, json, resource, sys
import numpy as np
target, model, inputs, threads, runs, options, module = sys.argv[1:8]
threads, runs, options = int(threads), int(runs), json.loads(options)

def status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise OSError(field)

def reset_peak():
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")

def maxrss_mb():
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1 << 20)

importlib.import_module(module)
from compress.export.registry import TARGETS
opener = lambda p, t: TARGETS[target].open(p, t, **options)
x = np.load(inputs)
try:
    reset_peak()
    before, source = status_mb("VmRSS"), "VmHWM (/proc/self/status, peak reset before load)"
except OSError:
    before, source = maxrss_mb(), "ru_maxrss"
runner = opener(model, threads)
for i in range(runs):
    runner.predict(x[i % len(x)][None])
after = status_mb("VmHWM") if source.startswith("VmHWM") else maxrss_mb()
print(json.dumps({"before_mb": before, "after_mb": after, "engine": runner.engine, "source": source}))
"""


def _env() -> dict:
    """The child must import this project the way the parent did (the repo root first on its path)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""),
            "TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2"}


def measure(model: Path | str, target: str, samples: np.ndarray, *, threads: int = 1, runs: int = 20,
            runner_options: dict | None = None, timeout: float = 300) -> dict:
    """Peak memory of ``model`` in ``target``'s runtime; ``samples`` are real inputs (a few are enough).
    ``runner_options``: keyword options for the target's ``open`` (from a device profile).

    Returns {"peak_memory_mb", "baseline_mb", "process_peak_mb", "includes", "engine"}; on a child failure
    ``peak_memory_mb`` is None and ``note`` says why.
    """
    from compress.export.registry import TARGETS

    module = TARGETS[target].runtime_module
    includes = INCLUDES.format(runs=runs, module=module, threads=threads)
    with tempfile.TemporaryDirectory(prefix="compress-peak-") as tmp:
        inputs = Path(tmp) / "x.npy"
        np.save(inputs, np.ascontiguousarray(samples[: max(1, min(len(samples), runs))], dtype=np.float32))
        cmd = [sys.executable, "-c", _CHILD, target, str(model), str(inputs), str(int(threads)), str(int(runs)),
               json.dumps(runner_options or {}), module]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
        except subprocess.TimeoutExpired:
            return {"peak_memory_mb": None, "includes": includes, "note": f"child timed out after {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_memory_mb": None, "includes": includes, "note": f"child failed: {last}"}
    out = json.loads(lines[-1])
    return {"peak_memory_mb": max(0.0, out["after_mb"] - out["before_mb"]), "baseline_mb": out["before_mb"],
            "process_peak_mb": out["after_mb"], "includes": includes, "engine": out["engine"], "runs": runs,
            "measured_with": out["source"],
            "threads": int(threads)}
