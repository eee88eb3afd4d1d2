"""The app's loop in Python: a wav file (or any mono PCM) through a streaming file, hop by hop, with the rule.

What WakeWordListener.swift and WakeWordListener.kt do on a phone, runnable here against the ONNX or TFLite
streaming file and the ``stream.json`` beside it, using only numpy, soundfile and the runtime, not compress:
an app team can check its own port against this on the same recording.

    python samples/wake_word/listen.py dist/wake-word-onnx/stream.onnx recording.wav
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path

import numpy as np


def open_step(path: Path):
    """(step(audio, states) -> (probs, states), zero states) for a .onnx or .tflite streaming file."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs() if i.name != "audio"]
        zeros = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != "audio"}

        def step(audio, states):
            probs, *new = session.run(["probs", *(f"{n}_out" for n in names)], {"audio": audio, **states})
            return probs[0], dict(zip(names, new))
        return step, zeros
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    details = runner.get_input_details()
    zeros = {n: np.zeros(d["shape"], np.float32) for n, d in details.items() if n != "audio"}

    def step(audio, states):
        out = runner(audio=audio, **states)
        return out["probs"][0], {n: out[f"{n}_out"] for n in states}
    return step, zeros


def listen(model: Path, pcm: np.ndarray) -> list[tuple[int, str]]:
    """[(hop, keyword)] fired on ``pcm`` (mono float32 at the contract's rate), the documented rule."""
    contract = json.loads((model.parent / "stream.json").read_text())
    step, states = open_step(model)
    hop, k = contract["hop_samples"], contract["smoothing_hops"]
    recent, quiet_until, fired = deque(maxlen=k), {}, []
    for t in range(len(pcm) // hop):
        probs, states = step(np.ascontiguousarray(pcm[t * hop:(t + 1) * hop], np.float32)[None], states)
        recent.append(probs)
        mean = np.mean(recent, axis=0)
        for keyword in contract["keywords"]:
            if mean[contract["labels"].index(keyword)] >= contract["threshold"] and t > quiet_until.get(keyword, -1):
                quiet_until[keyword] = t + contract["refractory_hops"]
                fired.append((t, keyword))
    return fired


def main() -> None:
    import soundfile as sf

    model, wav = Path(sys.argv[1]), Path(sys.argv[2])
    pcm, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    contract = json.loads((model.parent / "stream.json").read_text())
    if rate != contract["sample_rate"]:
        sys.exit(f"{wav}: {rate} Hz; expected {contract['sample_rate']} Hz (resample it first)")
    for hop, keyword in listen(model, pcm.mean(axis=1)):
        print(f"{(hop + 1) * contract['hop_samples'] / rate:8.2f} s  {keyword}")


if __name__ == "__main__":
    main()
