"""What an app must feed the TFLite (with the int8 scale/zero-point an app must apply) artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export)."""

from __future__ import annotations

from pathlib import Path


def describe_io(path: Path) -> dict:
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
