"""The Core ML streaming file (``compress.export.common.streaming``'s contract): an ML program whose inputs are
``audio`` and the states, whose outputs are ``probs`` and ``<state>_out`` (explicit state I/O, which every
deployment target from iOS15 runs), with the contract in the user-defined metadata under ``streaming``.

Core ML predictions need macOS; here the file is run by this project's MIL reference evaluator
(``compress.export.coreml.mil.evaluator``), op by op on the saved program, as the clip models are.
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

DEPLOYMENT_TARGET = "iOS16"  # the Core ML target's default (export/coreml/__init__.py)


@converts_model
def export_streaming(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                     contract: StreamingContract, name: str) -> Path:
    """Write ``step`` to ``path`` (an ``.mlpackage``, atomically) at fp32 compute precision."""
    import coremltools as ct

    example = (torch.zeros(1, contract.hop_samples), *(torch.zeros(s) for s in state_shapes.values()))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(step, example, check_trace=False)
        try:
            mlmodel = ct.convert(
                traced, convert_to="mlprogram", skip_model_load=True,
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                compute_precision=ct.precision.FLOAT32,
                inputs=[ct.TensorType(name=AUDIO_INPUT, shape=(1, contract.hop_samples), dtype=np.float32),
                        *(ct.TensorType(name=n, shape=s, dtype=np.float32) for n, s in state_shapes.items())],
                outputs=[ct.TensorType(name=PROBS_OUTPUT, dtype=np.float32),
                         *(ct.TensorType(name=state_output(n), dtype=np.float32) for n in state_shapes)])
        except Exception as exc:
            raise InputError(f"model {name!r}: its streaming form cannot be converted to target 'coreml' "
                             f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
    mlmodel.user_defined_metadata[METADATA_KEY] = contract.to_json()
    mlmodel.short_description = f"{name}: streaming keyword spotter, {contract.hop_samples} samples per hop"
    path = Path(path)
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
    return path


class CoremlStreamRunner:
    """A streaming ``.mlpackage`` in the MIL reference evaluator: ``step(audio, states) -> (probs, states)``."""

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
        self.engine = "Core ML (MIL reference evaluator; Core ML itself runs on macOS/iOS only)"

    def step(self, audio, states: dict) -> tuple:
        out = self.program.evaluate({AUDIO_INPUT: audio, **states})
        return out[PROBS_OUTPUT], {n: out[state_output(n)] for n in self.state_shapes}


def open_streaming(path: Path | str, threads: int = 1) -> CoremlStreamRunner:
    return CoremlStreamRunner(path, threads)
