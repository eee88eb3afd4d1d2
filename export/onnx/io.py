"""What an app must feed the ONNX artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export). A raw-pixel
input (uint8) also says what the file computes from the pixels (``preprocessing``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def model_facts(path: Path) -> dict:
    """What an ONNX file says about itself when it is used as a teacher (``Backend.model_facts``): its weight
    count (float and 8-bit initializers; integer ones such as reshape targets are not parameters), the
    declared per-sample input shape (None entries: dynamic), its ``metadata_props``, and the first float
    initializer holding NaN or infinity (``nonfinite``: (name, count)). Empty where the file cannot be read
    as a protobuf (ONNX Runtime loaded it: the run itself will say what is wrong)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception:
        return {}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    weights = (*floats, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    nonfinite = None
    for init in model.graph.initializer:
        if init.data_type not in floats or nonfinite is not None:
            continue
        try:
            values = numpy_helper.to_array(init).astype(np.float32)
        except Exception:
            continue
        bad = int((~np.isfinite(values)).sum())
        if bad:
            nonfinite = (init.name, bad)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    shape = None
    if len(inputs) == 1 and inputs[0].type.tensor_type.HasField("shape"):
        dims = inputs[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
    return {"params": int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in weights)),
            "input_shape": shape, "metadata": {p.key: p.value for p in model.metadata_props}, "nonfinite": nonfinite}
