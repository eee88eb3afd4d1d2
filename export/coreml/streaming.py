"""The Core ML streaming file (``compress.export.common.streaming``'s contract): an ML program whose inputs are
``audio`` and the states, whose outputs are ``probs`` and ``<state>_out`` (explicit state I/O, which every
deployment target from iOS15 runs), with the contract in the user-defined metadata under ``streaming``.

Core ML predictions need macOS; here the file is run by this project's MIL reference evaluator
(``compress.export.coreml.mil.evaluator``), op by op on the saved program, as the clip models are.

With a deployment target of iOS18 or later, ``export_stateful`` also writes Core ML's stateful form: the
states are ``MLState`` buffers inside the model (``ct.StateType``; the app creates them once with
``model.makeState()`` and passes them to every prediction) and the only input is ``audio``. Core ML keeps
states in float16, so that file's ring buffers round each stored frame to fp16; the report compares it
with the explicit-state file hop by hop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common.mode import converts_model
from compress.export.common.streaming import (AUDIO_INPUT, METADATA_KEY, PROBS_OUTPUT, StreamingContract,
                                              state_output)
from compress.export.coreml import STREAMING_SCHEMES

DEPLOYMENT_TARGET = "iOS16"  # the Core ML target's default (export/coreml/__init__.py)
STATEFUL_FROM = 18  # Core ML states (MLState) need iOS18


class _StatefulStep(torch.nn.Module):
    """The step with its states as registered buffers, updated in place each call (what ``ct.StateType``
    converts); the only input is the hop of audio, the only output ``probs``."""

    def __init__(self, step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.step, self.names = step, list(state_shapes)
        for name, shape in state_shapes.items():
            self.register_buffer(name, torch.zeros(shape))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        probs, *new = self.step(audio, *(getattr(self, n) for n in self.names))
        for name, value in zip(self.names, new):
            getattr(self, name)[:] = value  # a whole-buffer slice: the in-place form the converter maps to a state
        return probs


def _ios_version(target: str) -> int:
    digits = "".join(c for c in str(target) if c.isdigit())
    return int(digits) if digits else 0


def _convert_and_save(module: torch.nn.Module, example: tuple, path: Path | str, contract: StreamingContract,
                      name: str, what: str, target: str, scheme: str = "none", **io) -> Path:
    """Trace ``module`` on ``example``, convert it (fp32 compute, ``io``: the inputs/outputs/states; weights
    linear int8 per channel for ``scheme`` int8-weights), write the contract into its metadata and save it at
    ``path`` atomically."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from compress.export.coreml.convert import weight_config

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        try:
            mlmodel = ct.convert(traced, convert_to="mlprogram", skip_model_load=True,
                                 minimum_deployment_target=getattr(ct.target, target),
                                 compute_precision=ct.precision.FLOAT32, **io)
        except Exception as exc:
            raise InputError(f"model {name!r}: its {what} form cannot be converted to target 'coreml' "
                             f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
        if scheme == "int8-weights":
            mlmodel = cto.linear_quantize_weights(mlmodel, weight_config(scheme))
    mlmodel.user_defined_metadata[METADATA_KEY] = contract.to_json()
    mlmodel.short_description = f"{name}: {what} keyword spotter, {contract.hop_samples} samples per hop"
    path = Path(path)
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
    return path


@converts_model
def export_stateful(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                    contract: StreamingContract, name: str, options: dict) -> Path | None:
    """Core ML's stateful form of ``step`` at ``path`` (an ``.mlpackage``), or None where ``options``'
    deployment target predates iOS18."""
    import coremltools as ct

    target = str(options.get("deployment_target") or DEPLOYMENT_TARGET)
    if _ios_version(target) < STATEFUL_FROM:
        return None
    return _convert_and_save(
        _StatefulStep(step, state_shapes).eval(), (torch.zeros(1, contract.hop_samples),), path, contract, name,
        "stateful streaming", target,
        inputs=[ct.TensorType(name=AUDIO_INPUT, shape=(1, contract.hop_samples), dtype=np.float32)],
        outputs=[ct.TensorType(name=PROBS_OUTPUT, dtype=np.float32)],
        states=[ct.StateType(wrapped_type=ct.TensorType(shape=s, dtype=np.float16), name=n)
                for n, s in state_shapes.items()])


@converts_model
def export_streaming(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                     contract: StreamingContract, name: str, scheme: str = "none",
                     calibration: list[dict] | None = None) -> Path:
    """Write ``step`` to ``path`` (an ``.mlpackage``, atomically) at fp32 compute precision; ``scheme``
    int8-weights stores the weights linear int8 per channel (``calibration`` is not needed)."""
    import coremltools as ct

    if scheme not in STREAMING_SCHEMES:
        raise InputError(f"streaming scheme {scheme!r}: expected one of {', '.join(STREAMING_SCHEMES)} for target "
                         "'coreml'")

    example = (torch.zeros(1, contract.hop_samples), *(torch.zeros(s) for s in state_shapes.values()))
    return _convert_and_save(
        step, example, path, contract, name, "streaming", DEPLOYMENT_TARGET, scheme,
        inputs=[ct.TensorType(name=AUDIO_INPUT, shape=(1, contract.hop_samples), dtype=np.float32),
                *(ct.TensorType(name=n, shape=s, dtype=np.float32) for n, s in state_shapes.items())],
        outputs=[ct.TensorType(name=PROBS_OUTPUT, dtype=np.float32),
                 *(ct.TensorType(name=state_output(n), dtype=np.float32) for n in state_shapes)])


class CoremlStreamRunner:
    """A streaming ``.mlpackage`` in the MIL reference evaluator: ``step(audio, states) -> (probs, states)``.

    For the stateful form the states are Core ML states (``StateBuffer``s, float16): zeros given as arrays
    start new buffers, and the buffers themselves come back as the next hop's states, so ``run_stream`` drives
    both forms alike."""

    def __init__(self, path: Path | str, threads: int = 1):
        from compress.export.coreml.io import user_metadata
        from compress.export.coreml.mil.evaluator import load_program

        meta = user_metadata(path)
        if METADATA_KEY not in meta:
            raise InputError(f"{path}: no {METADATA_KEY!r} metadata; expected a streaming file written by compress")
        self.contract = StreamingContract.from_json(meta[METADATA_KEY], str(path))
        self.program = load_program(path)
        self.state_shapes = {n: tuple(int(d) for d in spec[1]) for n, spec in self.program.inputs.items()
                             if n != AUDIO_INPUT}
        self.stateful = bool(self.program.states)
        self.measured = False  # the evaluator's timings say nothing about a device's
        self.engine = ("Core ML (MIL reference evaluator" + (", Core ML states" if self.stateful else "")
                       + "; Core ML itself runs on macOS/iOS only)")

    def step(self, audio, states: dict) -> tuple:
        if self.stateful:
            from compress.export.coreml.mil.values import StateBuffer

            buffers = {n: v if isinstance(v, StateBuffer) else StateBuffer(np.asarray(v, np.float16))
                       for n, v in states.items()}
            return self.program.run_single({AUDIO_INPUT: audio, **buffers})[PROBS_OUTPUT], buffers
        out = self.program.evaluate({AUDIO_INPUT: audio, **states})
        return out[PROBS_OUTPUT], {n: out[state_output(n)] for n in self.state_shapes}


def open_streaming(path: Path | str, threads: int = 1) -> CoremlStreamRunner:
    return CoremlStreamRunner(path, threads)
