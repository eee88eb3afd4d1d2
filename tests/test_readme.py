"""Every command in the README's fenced blocks runs as written (issue 24): on the digits (the README's MNIST
paths become the digits; FSDD stays FSDD, skipped where it is absent), with small epochs and sample limits
appended, in README order, in one workspace, so the README cannot drift from the tool again.

A command passes when it exits 0, or, where it sets budgets or checks, exits 1 with only ``budget breached``
/ ``check failed`` lines (a verdict on a student trained for two epochs, not a broken example). Exit 2 (the
example is bad input) or 3 (a crash) fails the test, naming the README line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FSDD = ROOT.parent / "shared" / "datasets" / "fsdd"

# small epochs and limits, per command, appended where the command does not set the flag itself
FAST = {
    "distill-and-export": ["--teacher-epochs", "1", "--epochs", "2", "--limit-train", "300", "--limit-test", "100",
                           "--latency-runs", "3", "--quiet"],
    "search": ["--epochs", "1", "--teacher-epochs", "1", "--limit-train", "300", "--limit-test", "100",
               "--latency-runs", "3", "--time-budget", "1", "--family", "mlp", "--widths", "0.5", "--depths", "0.5",
               "--quiet"],
    "soft-targets": ["--teacher-epochs", "1", "--limit-train", "300", "--limit-test", "100", "--quiet"],
    "validate": ["--latency-runs", "3", "--quiet"],
    "debug-quant": ["--samples", "32"],
}
SHORTENED = ("--time-budget", "--epochs", "--teacher-epochs")  # replaced where an example sets them
VERDICTS = ("--max-", "--min-runtime", "--device", "--reference")  # flags that make exit 1 a verdict


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every ``compress``/``torchrun`` command in a fenced block: a line ending
    in a backslash or followed by an indented line continues; comments are dropped; in ``pip install ... &&
    compress ...`` the compress part runs (the install and ``pytest`` are what runs this test); the
    architecture sketch (``compress x = module: ...``) is prose, not a command."""
    out: list[list] = []
    fenced, continues = False, False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced, continues = not fenced, False
            continue
        if not fenced:
            continue
        text = line.split(" #", 1)[0].rstrip()
        if out and out[-1] is not None and (continues or line.startswith("    ")) and text.strip():
            out[-1][1] += " " + text.strip().rstrip("\\").strip()
        else:
            parts = [p.strip() for p in text.split("&&")]
            found = next((p for p in parts if re.match(r"^(compress|torchrun) ", p)), None)
            if "pytest" in text:  # the test command itself (and its `devices setup`, which downloads)
                found = None
            if found and not re.match(r"^compress [a-z-]+ = ", found):
                out.append([number, found.rstrip("\\").strip()])
            else:
                out.append(None)
        continues = text.endswith("\\")
    return [(n, c) for n, c in filter(None, out)]


def _options(text: str) -> str:
    """``[--a x] [--b p|q]`` optional parts: kept, with the first of alternatives; ``[--x ...]`` dropped."""
    text = re.sub(r"\[[^\]]*\.\.\.[^\]]*\]", "", text)
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], text)


def _runnable(text: str, names: dict[str, str]) -> list[str] | None:
    text = _options(text).replace("../shared/datasets/mnist", "digits")
    for placeholder, name in names.items():
        text = text.replace(placeholder, name)
    if "../shared/datasets/fsdd" in text:
        if not FSDD.is_dir():
            return None
        text = text.replace("../shared/datasets/fsdd", str(FSDD))
    args = shlex.split(text)
    if args[0] == "torchrun":
        args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
        command = "distill-and-export"
    else:
        args = [sys.executable, "-m", "compress.cli", *args[1:]]
        command = args[3]
    if "--arm64-emulator" in args:
        from compress.devices.arm64_emu import emu_root

        if not any(emu_root().glob("*/emulator.json")):
            i = args.index("--arm64-emulator")
            del args[i:i + 2]  # the emulator is built by `compress devices setup arm64-emu`, not here
    for flag_and_value in _pairs(FAST.get(command, [])):
        if flag_and_value[0] not in args:
            args += flag_and_value
        elif flag_and_value[0] in SHORTENED:  # a long budget in the example: the test's short one instead
            args[args.index(flag_and_value[0]) + 1] = flag_and_value[1]
    return args


def _pairs(flags: list[str]) -> list[list[str]]:
    out, i = [], 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out.append(flags[i:i + 2])
            i += 2
        else:
            out.append(flags[i:i + 1])
            i += 1
    return out


def raw_pixels(ds):
    """The digits' own values (0..16), undoing the data's normalization: what a user's member was trained on."""
    from compress.teachers.contracts import raw_values

    return raw_values(ds.x_train, ds.normalization).astype("float32")


def _member_files(folder: Path) -> None:
    """The user's own files the README's examples name, made here: digits-shaped members and models."""
    import torch

    from compress.data import load_digits

    ds = load_digits()
    torch.manual_seed(0)
    x, y = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train)

    def fit(model: torch.nn.Module, inputs: torch.Tensor) -> torch.nn.Module:
        """A few hundred full-batch steps: a member far above chance, as a user's own would be."""
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), y).backward()
            opt.step()
        return model.eval()

    flat = fit(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)),
               torch.as_tensor(raw_pixels(ds).reshape(len(x), -1) / 16))
    torch.onnx.export(flat, (torch.zeros(1, 64),), str(folder / "digits.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})

    class Nhwc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

        def forward(self, x):
            return self.body(x.permute(0, 3, 1, 2))

    torch.jit.save(torch.jit.script(fit(Nhwc(), torch.as_tensor(raw_pixels(ds) / 255).permute(0, 2, 3, 1))),
                   str(folder / "cnn.ts"))
    image = fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), x)
    for name in ("big.onnx", "teacher.onnx"):
        torch.onnx.export(image, (torch.as_tensor(ds.x_test[:1]),), str(folder / name), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(folder / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    _member_files(folder)

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=900)

    fast = FAST["distill-and-export"]
    # dist/<name> and dist/<name>-int8 of each target: one process per scheme, the three targets listed in a
    # recipe (the Core ML option reaches Core ML only); one small member: quick
    (folder / "all-targets.toml").write_text('[export]\ntargets = ["onnx", "tflite", "coreml"]\n')
    for quantize in ("none", "int8"):
        ios = ["--deployment-target", "iOS17"] if quantize == "int8" else []
        proc = run([sys.executable, "-m", "compress.cli", "distill-and-export", "-r", "all-targets.toml",
                    "--quantize", quantize, *ios, "--teacher", "mlp-small", *fast])
        assert proc.returncode in (0, 1), proc.stderr
    (folder / "my_model.tflite").write_bytes((folder / "dist" / "digits-mlp-small-tflite" / "model.tflite").read_bytes())
    init = run([sys.executable, "-m", "compress.cli", "init"])
    assert init.returncode == 0, init.stderr
    return folder, run


def _names(line: str) -> dict[str, str]:
    """``<name>`` is the run the example's own target wrote (by the model file it names; ONNX otherwise)."""
    target = "tflite" if ".tflite" in line else "coreml" if ".mlpackage" in line else "onnx"
    return {"<name>-int8": f"digits-mlp-small-{target}-int8", "<name>": f"digits-mlp-small-{target}"}


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_run():
    assert len(COMMANDS) >= 12, COMMANDS


@pytest.mark.parametrize("number, line", COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_every_readme_command_runs_as_written(workspace, number, line):
    folder, run = workspace
    args = _runnable(line, _names(line))
    if args is None:
        pytest.skip(f"README:{number} needs ../shared/datasets/fsdd, absent here")
    proc = run(args)
    verdict_lines = ("budget breached:", "check failed:", "error: no candidate meets the budgets")
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:") and not x.startswith(verdict_lines)]
    allowed = (0, 1) if any(flag in line for flag in VERDICTS) else (0,)
    assert proc.returncode in allowed and not errors, f"README:{number}: {line}\n-> {args}\n{proc.stderr[-3000:]}"
    if proc.returncode == 1:
        verdicts = [x for x in proc.stderr.splitlines() if x.startswith(verdict_lines)]
        assert verdicts, f"README:{number}: exit 1 without a breached budget or failed check\n{proc.stderr[-3000:]}"
