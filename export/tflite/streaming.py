"""The LiteRT streaming file (``compress.export.common.streaming``'s contract) and its interpreter runner.

litert-torch converts the streaming step called with keyword tensors, so the file's default signature names
its inputs ``audio`` and the states, and its outputs ``probs`` and ``<state>_out`` (an app calls the signature
runner with those names); the contract is the flatbuffer's ``streaming`` metadata entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.core.noise import native_stderr_filtered
from compress.export.common.mode import converting, converts_model
from compress.export.common.streaming import (AUDIO_INPUT, METADATA_KEY, PROBS_OUTPUT, StreamingContract,
                                              state_output)
from compress.export.tflite import STDERR_NOISE, STREAMING_SCHEMES
from compress.export.tflite.convert import add_metadata, dynamic_int8_keywords, quiet_progress
from compress.export.tflite.io import LABELS_KEY, read_metadata
from compress.export.tflite.runner import engine_name, load_interpreter


class _NamedStep(torch.nn.Module):
    """The step with keyword inputs and a dict of outputs: the names become the file's signature."""

    def __init__(self, step: torch.nn.Module, names: list[str]):
        super().__init__()
        self.step, self.names = step, names

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        probs, *states = self.step(inputs[AUDIO_INPUT], *(inputs[n] for n in self.names))
        return {PROBS_OUTPUT: probs, **{state_output(n): s for n, s in zip(self.names, states)}}


@converts_model
def export_streaming(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                     contract: StreamingContract, name: str, scheme: str = "none",
                     calibration: list[dict] | None = None) -> Path:
    """Write ``step`` to ``path`` (atomically) as a streaming ``.tflite``: fp32, or ``scheme`` int8-weights
    (dynamic range: int8 weights, float activations, so the inputs, outputs and states stay float32 as the
    contract says; ``calibration`` is not needed)."""
    import litert_torch

    if scheme not in STREAMING_SCHEMES:
        raise InputError(f"streaming scheme {scheme!r}: expected one of {', '.join(STREAMING_SCHEMES)} for target "
                         "'tflite'")
    named = _NamedStep(step, list(state_shapes)).eval()
    kwargs = {AUDIO_INPUT: torch.zeros(1, contract.hop_samples), **{k: torch.zeros(s) for k, s in state_shapes.items()}}
    path = Path(path)
    with converting(step), quiet_progress(), native_stderr_filtered(STDERR_NOISE):
        try:
            data = (dynamic_int8_keywords(named, kwargs) if scheme == "int8-weights" else
                    bytes(litert_torch.convert(named, sample_args=(), sample_kwargs=kwargs).model_content()))
        except Exception as exc:
            raise InputError(f"model {name!r}: its streaming form cannot be converted to target 'tflite' "
                             f"({str(exc).splitlines()[0][:200]})") from None
    data = add_metadata(data, {METADATA_KEY: contract.to_json(), LABELS_KEY: json.dumps(list(contract.labels))})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


class TfliteStreamRunner:
    """A streaming ``.tflite`` in LiteRT's interpreter (XNNPACK unless off): ``step(audio, states)``."""

    def __init__(self, path: Path | str, threads: int = 1, xnnpack: bool = True):
        interpreter = load_interpreter(path, threads, xnnpack)
        meta = read_metadata(path)
        if METADATA_KEY not in meta:
            raise InputError(f"{path}: no {METADATA_KEY!r} metadata; expected a streaming file written by compress")
        self.contract = StreamingContract.from_json(meta[METADATA_KEY], str(path))
        self.runner = interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        self.state_shapes = {n: tuple(int(d) for d in details[n]["shape"]) for n in details if n != AUDIO_INPUT}
        self.measured = True
        self.engine = engine_name(interpreter, threads, xnnpack)

    def step(self, audio, states: dict) -> tuple:
        out = self.runner(**{AUDIO_INPUT: audio}, **states)
        return out[PROBS_OUTPUT], {n: out[state_output(n)] for n in self.state_shapes}


def open_streaming(path: Path | str, threads: int = 1, xnnpack: bool = True) -> TfliteStreamRunner:
    return TfliteStreamRunner(path, threads, xnnpack)
