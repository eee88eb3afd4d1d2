"""Distilling the student: the training loop (``train``: one readable ``fit``, the optimizers, augmentation,
device and seed handling), the distillation losses (``losses``: the ``LOSSES`` registry, Hinton et al.'s
soft + hard loss and its variants), quantization-aware distillation before int8 conversion (``qat``) and the
post-training output-bias correction (``bias_correction``). Below the teachers (a built-in member is trained
with the same loop) and above the data and the model families."""
