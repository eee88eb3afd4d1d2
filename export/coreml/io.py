"""What an app must feed the Core ML artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export)."""

from __future__ import annotations

from pathlib import Path


def describe_io(path: Path) -> dict:
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
