"""Quantization-aware distillation matches or beats post-training int8 on the same student, and the QAT
graph exports to a full-int8 TFLite model that computes what torch simulated."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress import models
from compress.core.errors import InputError
from compress.distill.losses import hinton_loss
from compress.export import TARGETS
from compress.export.tflite.qat import export_tflite, predict, ptq_reference
from compress.distill.qat import qat_distill
from compress.distill.train import fit, predict_logits, seed_everything
from compress.core.metrics import accuracy, batched
from compress.export.common import ModelInfo

EPSILON = 0.01  # one test-set point (3.6 samples of 360): QAT must not lose more than noise vs PTQ


@pytest.fixture(scope="module")
def distilled(digits):
    """A briefly trained teacher, its soft targets at T=2, and the mlp-small student distilled from them."""
    cpu = torch.device("cpu")
    seed_everything(0)
    y = torch.as_tensor(digits.y_train)
    teacher = models.mlp(digits.input_shape, digits.num_classes, hidden=(256,))
    fit(teacher, digits.x_train, lambda z, idx: F.cross_entropy(z, y[idx]), epochs=6, lr=1e-3, device=cpu)
    soft = torch.softmax(torch.as_tensor(predict_logits(teacher, digits.x_train)) / 2.0, -1).numpy()
    seed_everything(0)
    student = models.build("mlp-small", digits.input_shape, digits.num_classes)
    fit(student, digits.x_train, lambda z, idx: hinton_loss(z, torch.as_tensor(soft[idx]), y[idx], 2.0, 0.1),
        epochs=12, lr=3e-3, device=cpu)
    calib = digits.x_train[np.random.default_rng(0).permutation(len(digits.x_train))[:200]]
    return {"student": student.eval(), "soft": soft, "calib": calib}


def test_qat_matches_or_beats_ptq(distilled, digits, tmp_path):
    student, calib = distilled["student"], distilled["calib"]
    fp32_acc = accuracy(predict_logits(student, digits.x_test), digits.y_test)
    ptq = ptq_reference(student, torch.as_tensor(digits.x_test[:1]), calib)  # batch-1 graph, like the .tflite
    ptq_acc = accuracy(np.concatenate([predict(ptq, x[None]) for x in digits.x_test]), digits.y_test)
    qat = qat_distill(copy.deepcopy(student), digits.x_train, distilled["soft"], digits.y_train, temperature=2.0,
                      alpha=0.1, epochs=3, lr=3e-4, seed=0, calibration=calib, qat=TARGETS["tflite"].qat)
    qat_acc = accuracy(predict(qat, digits.x_test), digits.y_test)
    assert fp32_acc > 0.9
    assert qat_acc >= ptq_acc - EPSILON, (fp32_acc, ptq_acc, qat_acc)
    assert qat_acc >= fp32_acc - 0.03
    # the float student is untouched (QAT worked on a copy of its weights)
    assert accuracy(predict_logits(student, digits.x_test), digits.y_test) == fp32_acc

    from compress.export.tflite.runner import open_tflite
    from compress.export.tflite.convert import read_metadata

    path = export_tflite(qat, torch.as_tensor(digits.x_test[:1]), tmp_path / "qat.tflite",
                         ModelInfo(name="qat", labels=digits.labels))
    runner = open_tflite(path)
    tfl = batched(runner.predict, digits.x_test)
    assert abs(accuracy(tfl, digits.y_test) - qat_acc) <= 2 / len(digits.y_test)
    assert np.mean(tfl.argmax(1) == predict(qat, digits.x_test).argmax(1)) >= 0.99
    assert read_metadata(path)["labels"] == digits.labels
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    assert interp.get_input_details()[0]["dtype"] == np.int8  # full integer, like compress.export.tflite.convert variant int8


def test_qat_needs_calibration(distilled, digits):
    with pytest.raises(InputError, match="calibration"):
        qat_distill(distilled["student"], digits.x_train, distilled["soft"], digits.y_train, temperature=2.0,
                    alpha=0.1, epochs=1, lr=1e-4, seed=0, calibration=None, qat=TARGETS["tflite"].qat)
