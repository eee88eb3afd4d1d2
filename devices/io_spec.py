"""What an app must feed an exported model and what it gets back, read from the artifact itself.

The manifest's ``inputs``/``outputs`` come from here, so they describe the file as shipped (names, shapes,
dtypes, and for int8 TFLite models the scale/zero-point an app must apply), not what we meant to export.
"""

from __future__ import annotations

from pathlib import Path


def onnx_io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def entry(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [entry(v) for v in model.graph.input], "outputs": [entry(v) for v in model.graph.output]}


def tflite_io(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))

    def entry(d):
        scale, zero_point = d["quantization"]
        e = {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": d["dtype"].__name__}
        if scale:
            e["quantization"] = {"scale": float(scale), "zero_point": int(zero_point),
                                 "real_value": "scale * (q - zero_point)"}
        return e

    return {"inputs": [entry(d) for d in interp.get_input_details()],
            "outputs": [entry(d) for d in interp.get_output_details()]}


def coreml_io(path: Path) -> dict:
    from coremltools.models.utils import load_spec

    spec = load_spec(str(path))

    def entry(f):
        kind = f.type.WhichOneof("Type")
        e = {"name": f.name, "type": kind}
        if kind == "multiArrayType":
            e["shape"] = [int(s) for s in f.type.multiArrayType.shape]
            e["dtype"] = {65568: "float32", 65552: "float16", 131104: "int32"}.get(f.type.multiArrayType.dataType, "other")
        return e

    desc = spec.description
    return {"inputs": [entry(f) for f in desc.input], "outputs": [entry(f) for f in desc.output],
            "note": "classLabel_probs maps each label to the model's score (logits; Core ML adds no softmax)"
            if desc.predictedProbabilitiesName else ""}


IO_DESCRIBERS = {
    "onnx": onnx_io,
    "tflite": tflite_io,
    "coreml": coreml_io,
}
