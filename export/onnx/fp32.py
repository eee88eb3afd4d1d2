"""The fp32 ONNX file: torch.onnx (the dynamo exporter) with a dynamic batch axis, this tool's metadata and
a full checker pass; every scheme starts from it (``quantize``), and what it records is read back here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from compress import __version__
from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.mode import converts_model
from compress.export.common.preprocess import from_metadata


INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _failed_op(exc: BaseException) -> str | None:
    """The operator the exporter could not translate, from the exception chain ("torch.ops.prims.prod")."""
    while exc is not None:
        found = re.search(r"target=(torch\.ops\.[A-Za-z0-9_.]+)", str(exc))
        if found:
            return found.group(1).removesuffix(".default")
        exc = exc.__cause__ or exc.__context__
    return None



@converts_model
def export_fp32(model: nn.Module, example: torch.Tensor, path: Path | str, info: ModelInfo, *,
                opset: int | None = None) -> Path:
    """The fp32 export of ``model`` exactly as given (already wrapped when the file takes raw pixels)."""
    example = example.detach().cpu().contiguous()  # a strided example loses the dynamic batch axis
    if example.shape[0] == 1:  # torch.export specializes a size-1 dimension wherever a model's ops can tell
        example = torch.cat([example, example])  # (0/1 specialization): trace with two rows
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=65536)
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False,
            )
        except Exception as exc:
            op = _failed_op(exc)
            reason = f"op {op} has no ONNX translation" if op else _first_line(exc)
            raise InputError(f"model {info.name!r}: cannot be converted to target 'onnx' ({reason}); expected only ops "
                             "the torch.onnx (dynamo) exporter translates: rewrite that layer or pick another target") from None
        proto = program.model_proto
        set_metadata(proto, info.metadata())
        proto.doc_string = info.description or f"{info.name}: classifier over {len(info.labels)} classes"
        onnx.save_model(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise InputError(f"model {info.name!r}: exported ONNX fails onnx.checker ({_first_line(exc)})") from None
    return path


def set_metadata(proto, entries: dict[str, str]) -> None:
    """``proto``'s metadata_props: ``entries`` then ``producer`` (this tool's, torch's and onnx's versions),
    in place of the exporter's internal bookkeeping."""
    del proto.metadata_props[:]
    for key, value in {**entries, "producer": f"compress {__version__} (torch {torch.__version__}, "
                                              f"onnx {onnx.__version__})"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: Path | str) -> dict[str, str]:
    """The model's metadata_props as a dict (what an app reads back)."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_preprocessing(path: Path | str) -> dict:
    """The raw-pixel preprocessing the file at ``path`` records ({}: it takes normalized float32)."""
    return from_metadata(read_metadata(path))
