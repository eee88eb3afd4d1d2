"""What an app must feed the Core ML artifact and what it gets back, read from the file itself (the
manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export). An image input
(raw-pixel preprocessing, ``input_type`` image) is ``imageType`` with its size and color space (GRAYSCALE or
RGB: an app passes a ``CVPixelBuffer``), and the preprocessing the package records."""

from __future__ import annotations

from pathlib import Path


def describe_io(path: Path) -> dict:
    from coremltools.models.utils import load_spec
    from coremltools.proto import FeatureTypes_pb2

    from compress.export.common.preprocess import from_metadata

    spec = load_spec(str(path))

    def entry(f):
        kind = f.type.WhichOneof("Type")
        e = {"name": f.name, "type": kind}
        if kind == "multiArrayType":
            e["shape"] = [int(s) for s in f.type.multiArrayType.shape]
            e["dtype"] = {65568: "float32", 65552: "float16", 131104: "int32"}.get(f.type.multiArrayType.dataType, "other")
        elif kind == "imageType":
            image = f.type.imageType
            e.update(width=int(image.width), height=int(image.height),
                     color_space=FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace))
        return e

    desc = spec.description
    inputs = [entry(f) for f in desc.input]
    preprocessing = from_metadata(dict(desc.metadata.userDefined))
    if preprocessing:  # raw pixels in (an image or pixel values 0..255): what the package computes from them
        inputs[0]["preprocessing"] = preprocessing
    return {"inputs": inputs, "outputs": [entry(f) for f in desc.output],
            "note": "classLabel_probs maps each label to the model's score (logits; Core ML adds no softmax)"
            if desc.predictedProbabilitiesName else ""}


def user_metadata(path: Path | str) -> dict[str, str]:
    """The package's user-defined metadata (what the tool wrote beside the model: labels, preprocessing, the
    streaming contract), read from its spec alone."""
    from coremltools.models.utils import load_spec

    return dict(load_spec(str(path)).description.metadata.userDefined)
