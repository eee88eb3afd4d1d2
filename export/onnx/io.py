"""What an app must feed the ONNX artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export). A raw-pixel
input (uint8) also says what the file computes from the pixels (``preprocessing``)."""

from __future__ import annotations

from pathlib import Path

from compress.export.common.preprocess import from_metadata


def describe_io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    inputs = [entry(v) for v in model.graph.input]
    preprocessing = from_metadata({p.key: p.value for p in model.metadata_props})
    if preprocessing:  # raw 8-bit pixels in: what the file computes from them before the first layer
        inputs[0]["preprocessing"] = preprocessing
    return {"inputs": inputs, "outputs": [entry(v) for v in model.graph.output]}
