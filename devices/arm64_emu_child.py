"""Runs one exported model on one batch inside the ARM64 emulator (started by ``compress.devices.arm64_emu``).

Usage: ``python3.11 arm64_emu_child.py RUNNER.py MODEL IN.npy OUT.npy THREADS`` under ``qemu-aarch64-static``.

It runs in the emulated aarch64 Python, which has only numpy and the runtimes' aarch64 wheels, so it cannot
import this project: ``RUNNER.py`` is the target's self-contained runner (``Backend.emulated_runner``),
loaded by path. Output: OUT.npy (float32 scores) and one JSON line on stdout (engine). Exit code 2 with a
one-line message on stderr means a problem with the input (missing or unloadable model, wrong input
shape); anything else is a crash.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import numpy as np


def _load(runner_file: str):
    spec = importlib.util.spec_from_file_location("emulated_runner", runner_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    runner = _load(argv[1])
    model, in_path, out_path, threads = argv[2], argv[3], argv[4], int(argv[5])
    x = np.load(in_path)
    start = time.perf_counter()
    try:
        y, engine = runner.run(model, x, threads)
    except runner.InputProblem as exc:
        print(exc, file=sys.stderr)
        return 2
    np.save(out_path, np.asarray(y, dtype=np.float32))
    print(json.dumps({"engine": engine, "seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
