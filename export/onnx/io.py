"""What an app must feed the ONNX artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export)."""

from __future__ import annotations

from pathlib import Path


def describe_io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output]}
