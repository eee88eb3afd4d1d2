"""The streaming front-end's per-frame cost (issue 26, item 5): the DFT as a convolution vs the FFT ops runtimes have.

A streaming keyword spotter computes one log-mel frame per hop. Today that frame's spectrum is a dense DFT
written as a fixed-weight convolution (``compress.models.frontend.LogMel``: n_fft x n_fft MACs, 40 k at
n_fft 200; every converter handles it). The alternative is the FFT each runtime may run:
``torch.fft.rfft``, which the ONNX exporter writes as ``DFT`` and litert-torch as ``RFFT2D`` where they can.
For each variant and n_fft this bench exports the one-frame front-end (PCM frame -> log-mel) to ONNX and
TFLite, checks it against the convolution form in PyTorch on real FSDD frames (max abs difference in the log
domain), and times it batch 1 in ONNX Runtime and LiteRT (1 thread, median of ``--runs`` after warm-up, the
variants interleaved in rounds so load drifts hit them alike); Core ML is converted (the MIL evaluator's
timings say nothing about a device, so none are reported). A variant that does not convert says why.

    python bench/frontend.py [--nfft 200 256 128] [--runs 2000] [--rounds 5]

Prints a table and writes ``bench/results/frontend.json``. It measures; the models keep the convolution form
until a variant is faster with parity kept in every runtime (what the table shows decides that).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.models.frontend import LogMel, hann_window, mel_filterbank  # noqa: E402

FSDD = ROOT.parent / "shared" / "datasets" / "fsdd"


class ConvFrame(nn.Module):
    """One frame through the model's own front-end: the DFT as a convolution."""

    def __init__(self, n_fft: int, sample_rate: int = 8000, n_mels: int = 40):
        super().__init__()
        self.logmel = LogMel(sample_rate=sample_rate, n_fft=n_fft, hop=n_fft, n_mels=n_mels)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.logmel(frame)[:, 0, :, 0]


class RfftFrame(nn.Module):
    """The same log-mel from ``torch.fft.rfft`` of the windowed frame (the same window and mel filters)."""

    def __init__(self, reference: ConvFrame):
        super().__init__()
        fe = reference.logmel
        self.register_buffer("window", torch.tensor(hann_window(fe.n_fft), dtype=torch.float32))
        mel = mel_filterbank(fe.sample_rate, fe.n_fft, fe.n_mels, fe.fmin, fe.fmax)
        self.register_buffer("mel", torch.tensor(mel, dtype=torch.float32))
        self.eps = fe.eps

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(frame * self.window, dim=-1)
        power = spectrum.real.pow(2) + spectrum.imag.pow(2)
        return torch.log(power @ self.mel.T + self.eps)


def real_frames(n_fft: int, count: int = 256) -> np.ndarray:
    from compress.data.audio import read_clip

    files = sorted((FSDD / "recordings").glob("*.wav"))[::37][:32]
    audio = np.concatenate([read_clip(f, 8000) for f in files])
    starts = np.linspace(0, len(audio) - n_fft - 1, count).astype(int)
    return np.stack([audio[s:s + n_fft] for s in starts]).astype(np.float32)


def export_onnx(module: nn.Module, n_fft: int, path: Path) -> tuple[Path | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), (torch.zeros(1, n_fft),), dynamo=True, verbose=False)
        program.save(str(path))
        import onnx

        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        return path, "ops: " + ", ".join(ops)
    except Exception as exc:
        return None, f"does not convert: {str(exc).splitlines()[0][:160]}"


def export_tflite(module: nn.Module, n_fft: int, path: Path) -> tuple[Path | None, str]:
    try:
        import litert_torch

        model = litert_torch.convert(module.eval(), (torch.zeros(1, n_fft),))
        path.write_bytes(bytes(model.model_content()))
        from ai_edge_litert.interpreter import Interpreter

        ops = sorted({o["op_name"] for o in Interpreter(model_path=str(path))._get_ops_details()})
        return path, "ops: " + ", ".join(ops)
    except Exception as exc:
        return None, f"does not convert: {str(exc).splitlines()[0][:160]}"


def convert_coreml(module: nn.Module, n_fft: int) -> str:
    try:
        import coremltools as ct

        traced = torch.jit.trace(module.eval(), (torch.zeros(1, n_fft),), check_trace=False)
        ml = ct.convert(traced, convert_to="mlprogram", skip_model_load=True, minimum_deployment_target=ct.target.iOS18,
                        inputs=[ct.TensorType(name="frame", shape=(1, n_fft), dtype=np.float32)])
        ops = sorted({op.op_type for op in ml._mil_program.functions["main"].operations} - {"const"})
        return "converts (iOS18); ops: " + ", ".join(ops)
    except Exception as exc:
        return f"does not convert: {str(exc).splitlines()[0][:160]}"


def runners(onnx_path: Path | None, tflite_path: Path | None):
    out = {}
    if onnx_path is not None:
        from compress.export.onnx.runner import cpu_session

        session = cpu_session(onnx_path, 1)
        name = session.get_inputs()[0].name
        out["onnxruntime"] = lambda x: session.run(None, {name: x})[0]
    if tflite_path is not None:
        from compress.export.tflite.runner import load_interpreter

        interpreter = load_interpreter(tflite_path, 1, True)
        inp, outp = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

        def run(x):
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return interpreter.get_tensor(outp)
        out["litert"] = run
    return out


def time_interleaved(calls: dict, x: np.ndarray, runs: int, rounds: int) -> dict:
    """Median microseconds per batch-1 call of every callable, in rounds that alternate between them."""
    samples = {k: [] for k in calls}
    for fn in calls.values():
        for i in range(50):
            fn(x[i % len(x)][None])
    for _ in range(rounds):
        for key, fn in calls.items():
            times = np.empty(runs // rounds)
            for i in range(len(times)):
                one = x[i % len(x)][None]
                start = time.perf_counter()
                fn(one)
                times[i] = time.perf_counter() - start
            samples[key].append(times)
    return {k: float(np.median(np.concatenate(v)) * 1e6) for k, v in samples.items()}


def measure(n_fft: int, runs: int, rounds: int, work: Path) -> list[dict]:
    frames = real_frames(n_fft)
    conv = ConvFrame(n_fft).eval()
    variants = {"conv-dft": conv, "rfft": RfftFrame(conv).eval()}
    with torch.no_grad():
        reference = conv(torch.from_numpy(frames)).numpy()
    rows, calls = [], {}
    for name, module in variants.items():
        with torch.no_grad():
            torch_diff = float(np.abs(module(torch.from_numpy(frames)).numpy() - reference).max())
        onnx_path, onnx_note = export_onnx(module, n_fft, work / f"{name}-{n_fft}.onnx")
        tflite_path, tflite_note = export_tflite(module, n_fft, work / f"{name}-{n_fft}.tflite")
        row = {"variant": name, "n_fft": n_fft, "dft_macs_conv_form": n_fft * n_fft if name == "conv-dft" else None,
               "torch_max_abs_vs_conv": torch_diff, "onnx": onnx_note, "tflite": tflite_note,
               "coreml": convert_coreml(module, n_fft), "parity_in_runtime": {}}
        for runtime, fn in runners(onnx_path, tflite_path).items():
            row["parity_in_runtime"][runtime] = float(np.abs(np.concatenate([fn(f[None]) for f in frames[:64]])
                                                              - reference[:64]).max())
            calls[(name, runtime)] = fn
        rows.append(row)
    timed = time_interleaved(calls, frames, runs, rounds)
    for row in rows:
        row["us_per_frame"] = {rt: us for (name, rt), us in timed.items() if name == row["variant"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nfft", nargs="+", type=int, default=[200, 256, 128])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (FSDD / "recordings").is_dir():
        sys.exit(f"{FSDD}: FSDD not found (real frames are measured)")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as work:
        for n_fft in args.nfft:
            rows += measure(n_fft, args.runs, args.rounds, Path(work))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="one log-mel frame (40 bands, 8 kHz), batch 1, 1 thread: median us per frame")
    for head in ("n_fft", "variant", "ORT us", "LiteRT us", "max |log diff| vs conv (torch / ORT / LiteRT)",
                 "ONNX", "TFLite", "Core ML"):
        table.add_column(head)
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        par = r["parity_in_runtime"]
        table.add_row(str(r["n_fft"]), r["variant"], fmt(r["us_per_frame"].get("onnxruntime")),
                      fmt(r["us_per_frame"].get("litert")),
                      f"{r['torch_max_abs_vs_conv']:.1e} / " + " / ".join(f"{par[k]:.1e}" if k in par else "—"
                                                                          for k in ("onnxruntime", "litert")),
                      r["onnx"][:60], r["tflite"][:60], r["coreml"][:60])
    Console(width=240).print(table)
    dest = ROOT / "bench" / "results" / "frontend.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"runs": args.runs, "rounds": args.rounds, "threads": 1, "rows": rows}, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
