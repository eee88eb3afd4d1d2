"""The ONNX streaming file (``compress.export.common.streaming``'s contract) and its ONNX Runtime runner.

The streaming step (``(audio, *states) -> (probs, *states_out)``, batch 1, static shapes) is exported with
the dynamo exporter like the clip model; the contract goes into ``metadata_props`` under ``streaming``.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common.mode import converts_model
from compress.export.common.streaming import (AUDIO_INPUT, METADATA_KEY, PROBS_OUTPUT, StreamingContract,
                                              state_output)
from compress.export.onnx.fp32 import set_metadata
from compress.export.onnx.quantize import module_nodes, quantize
from compress.export.onnx.runner import cpu_session


def export_streaming(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                     contract: StreamingContract, name: str, scheme: str = "none",
                     calibration: list[dict] | None = None) -> Path:
    """Write ``step`` to ``path`` (atomically) as a streaming ONNX file; inputs ``audio`` then the states in
    ``state_shapes``' order, outputs ``probs`` then ``<state>_out``. ``int8-weights`` / ``int8``: the float
    file quantized by ONNX Runtime (``compress.export.onnx.quantize``; static int8 calibrated on
    ``calibration``, real per-hop feeds of every input, states included), the step's ``float_under_int8``
    (the log-mel, ``compress.models.frontend.FLOAT_UNDER_INT8``) kept float."""
    if scheme == "none":
        return _export_float(step, state_shapes, path, contract, name)
    if scheme == "int8" and not calibration:
        raise InputError("streaming int8: expected calibration feeds (real hops with their states)")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="onnx-stream-") as work:
        float_path = _export_float(step, state_shapes, Path(work) / "float.onnx", contract, name)
        return quantize(float_path, path, scheme, calibration=calibration,
                        float_layers=module_nodes(float_path, getattr(step, "float_under_int8", ())))


@converts_model
def _export_float(step: torch.nn.Module, state_shapes: dict[str, tuple[int, ...]], path: Path | str,
                  contract: StreamingContract, name: str) -> Path:
    example = (torch.zeros(1, contract.hop_samples), *(torch.zeros(s) for s in state_shapes.values()))
    inputs = [AUDIO_INPUT, *state_shapes]
    outputs = [PROBS_OUTPUT, *(state_output(s) for s in state_shapes)]
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(step, example, dynamo=True, input_names=inputs, output_names=outputs,
                                        external_data=False, verbose=False)
        except Exception as exc:
            raise InputError(f"model {name!r}: its streaming form cannot be converted to target 'onnx' "
                             f"({str(exc).splitlines()[0][:200]})") from None
        proto = program.model_proto
        set_metadata(proto, {METADATA_KEY: contract.to_json(), "labels": json.dumps(list(contract.labels))})
        proto.doc_string = f"{name}: streaming keyword spotter, {contract.hop_samples} samples per hop"
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


class OnnxStreamRunner:
    """A streaming ONNX file in an ONNX Runtime CPU session: ``step(audio, states) -> (probs, states)``."""

    def __init__(self, path: Path | str, threads: int = 1):
        import onnxruntime as ort

        self.session = cpu_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise InputError(f"{path}: no {METADATA_KEY!r} metadata; expected a streaming file written by compress")
        self.contract = StreamingContract.from_json(meta[METADATA_KEY], str(path))
        self.state_shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs() if i.name != AUDIO_INPUT}
        self.outputs = [PROBS_OUTPUT, *(state_output(s) for s in self.state_shapes)]
        self.measured = True
        self.engine = f"ONNX Runtime {ort.__version__}"

    def step(self, audio, states: dict) -> tuple:
        probs, *new = self.session.run(self.outputs, {AUDIO_INPUT: audio, **states})
        return probs, dict(zip(self.state_shapes, new))


def open_streaming(path: Path | str, threads: int = 1) -> OnnxStreamRunner:
    return OnnxStreamRunner(path, threads)
