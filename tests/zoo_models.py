"""A small model zoo of standard mobile architectures for the Core ML reference-evaluator matrix
(``tests/test_coreml_zoo.py``), written here so the tests need no torchvision and no downloads.

Every builder returns ``(module, example input shape, input kind)``: a 10-class classifier in eval mode,
initialised deterministically (``torch.manual_seed``) with BatchNorm running statistics that are not the
identity, so a converter that drops or misplaces a normalization cannot pass. Input kinds:

  image     (1, 3, 16, 16): three real digits, one per channel (``tests.mil_cases.digit_images``)
  sequence  (1, 16, 16):    a real digit read row by row as 16 steps of 16 features (``digit_sequences``)

Sizes are ~10k to ~180k parameters so each converts in seconds. ``EXPORTED`` names the models converted
from ``torch.export`` (an ``ExportedProgram``) rather than ``torch.jit.trace``.

``trained(name)`` fits a model briefly (seeded Adam on real digits that are not the test inputs): a
randomly initialised classifier picks the same class for every input, so "top-1 agreement" after
compression would be trivially 100%; a model that separates the digits makes the check meaningful.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 3, 16, 16)
SEQUENCE_SHAPE = (1, 16, 16)


def _bn_stats(module: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, then set eval mode."""
    g = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return module.eval()


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class _Classifier(nn.Module):
    """features -> global average pool -> linear head."""

    def __init__(self, features: nn.Module, channels: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


# --- MobileNetV2 -------------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), _conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v2():
    torch.manual_seed(0)
    cfg = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1)]  # (expand, channels, stride)
    layers, cin = [_conv_bn(3, 16, 3, 2, act=nn.ReLU6)], 16
    for t, c, s in cfg:
        layers.append(InvertedResidual(cin, c, s, t))
        cin = c
    layers.append(_conv_bn(cin, 64, 1, act=nn.ReLU6))
    return _bn_stats(_Classifier(nn.Sequential(*layers), 64), 0), IMAGE_SHAPE, "image"


# --- MobileNetV3-small ---------------------------------------------------------------------------------

class SqueezeExcite(nn.Module):
    """Channel gates from the pooled features: 1x1 reduce, ``act``, 1x1 expand, ``gate``."""

    def __init__(self, channels: int, squeeze: int, act: type = nn.ReLU, gate: type = nn.Hardsigmoid):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channels, squeeze, 1), act(), nn.Conv2d(squeeze, channels, 1), gate())

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True))


class V3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool, act: type):
        super().__init__()
        layers = [] if hidden == cin else [_conv_bn(cin, hidden, 1, act=act)]
        layers.append(_conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v3_small():
    torch.manual_seed(1)
    hs, re = nn.Hardswish, nn.ReLU
    cfg = [(16, 16, 3, 2, True, re), (72, 24, 3, 2, False, re), (88, 24, 3, 1, False, re),
           (96, 40, 5, 2, True, hs), (120, 40, 5, 1, True, hs)]  # (hidden, out, kernel, stride, SE, activation)
    layers, cin = [_conv_bn(3, 16, 3, 2, act=hs)], 16
    for hidden, c, k, s, se, act in cfg:
        layers.append(V3Block(cin, hidden, c, k, s, se, act))
        cin = c
    layers.append(_conv_bn(cin, 96, 1, act=hs))
    return _bn_stats(_Classifier(nn.Sequential(*layers), 96), 1), IMAGE_SHAPE, "image"


# --- ResNet-18-style ---------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, identity shortcut, or a stride-2 1x1 conv-BN downsample when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, act=None))
        self.down = None if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


def resnet18_small():
    torch.manual_seed(2)
    widths = (8, 16, 32, 64)
    layers, cin = [_conv_bn(3, widths[0], 3, 1), nn.MaxPool2d(3, 2, 1)], widths[0]
    for i, w in enumerate(widths):
        layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
        cin = w
    return _bn_stats(_Classifier(nn.Sequential(*layers), cin), 2), IMAGE_SHAPE, "image"


# --- EfficientNet-style MBConv -------------------------------------------------------------------------

class MBConv(nn.Module):
    """1x1 expand (SiLU) -> depthwise (SiLU) -> squeeze-excite (SiLU, sigmoid) -> 1x1 projection."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, act=nn.SiLU)]
        layers += [_conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                   SqueezeExcite(hidden, max(4, cin // 4), act=nn.SiLU, gate=nn.Sigmoid),
                   _conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def efficientnet_small():
    torch.manual_seed(3)
    cfg = [(1, 16, 3, 1), (6, 24, 3, 2), (6, 24, 3, 1), (6, 40, 5, 2), (6, 40, 5, 1)]  # (expand, out, k, stride)
    layers, cin = [_conv_bn(3, 16, 3, 2, act=nn.SiLU)], 16
    for t, c, k, s in cfg:
        layers.append(MBConv(cin, c, k, s, t))
        cin = c
    layers.append(_conv_bn(cin, 96, 1, act=nn.SiLU))
    return _bn_stats(_Classifier(nn.Sequential(*layers), 96), 3), IMAGE_SHAPE, "image"


# --- Transformer encoder (converted via torch.export) --------------------------------------------------

class TransformerClassifier(nn.Module):
    def __init__(self, features: int = 16, d_model: int = 32, heads: int = 4, layers: int = 2, steps: int = 16):
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(0.1 * torch.randn(1, steps, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, NUM_CLASSES)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.position)
        return self.head(self.norm(h.mean(dim=1)))


def transformer_encoder():
    torch.manual_seed(4)
    return TransformerClassifier().eval(), SEQUENCE_SHAPE, "sequence"


# --- keyword spotting: LSTM and GRU ------------------------------------------------------------------

class RecurrentKWS(nn.Module):
    """(1, T, F) features -> 2-layer ``cell`` (LSTM or GRU), batch_first -> last step -> linear head."""

    def __init__(self, cell: type, features: int = 16, hidden: int = 32):
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def lstm_kws():
    torch.manual_seed(5)
    return RecurrentKWS(nn.LSTM).eval(), SEQUENCE_SHAPE, "sequence"


def gru_kws():
    torch.manual_seed(6)
    return RecurrentKWS(nn.GRU).eval(), SEQUENCE_SHAPE, "sequence"


# --- U-Net-style encoder/decoder -------------------------------------------------------------------------

class UNetSmall(nn.Module):
    """Encoder convs at 16/8/4; decoder: bilinear upsample to 8 + skip concat, ConvTranspose2d to 16 +
    skip concat; global pool + linear head. Decoder input channels are multiples of 32 so int4 blocks of
    32 input channels apply to them."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _conv_bn(3, 16), _conv_bn(16, 32, stride=2), _conv_bn(32, 64, stride=2)
        self.up_bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2 = _conv_bn(64 + 32, 32)
        self.up_transpose = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec1 = _conv_bn(16 + 16, 32)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up_bilinear(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up_transpose(d2), e1], dim=1))
        return self.head(d1.mean(dim=(2, 3)))


def unet_small():
    torch.manual_seed(7)
    return _bn_stats(UNetSmall(), 7), IMAGE_SHAPE, "image"


# --- Conformer block ---------------------------------------------------------------------------------

class FeedForward(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x):
        return self.net(x)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise Conv1d (2d) -> GLU -> depthwise Conv1d -> BatchNorm1d -> SiLU -> pointwise."""

    def __init__(self, d: int, kernel: int = 7):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pointwise_in = nn.Conv1d(d, 2 * d, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d, d, 1)

    def forward(self, x):  # (B, T, d)
        h = self.glu(self.pointwise_in(self.norm(x).transpose(1, 2)))
        h = self.pointwise_out(self.act(self.bn(self.depthwise(h))))
        return h.transpose(1, 2)


class ConformerClassifier(nn.Module):
    """Linear embedding, one Conformer block (FF/2, MHSA, conv module, FF/2, LayerNorm), mean pool, head."""

    def __init__(self, features: int = 16, d: int = 32, heads: int = 4):
        super().__init__()
        self.embed = nn.Linear(features, d)
        self.ff1, self.ff2 = FeedForward(d, 4 * d), FeedForward(d, 4 * d)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.conv = ConvModule(d)
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, NUM_CLASSES)

    def forward(self, x):
        x = self.embed(x)
        x = x + 0.5 * self.ff1(x)
        q = self.attn_norm(x)
        x = x + self.attn(q, q, q, need_weights=False)[0]
        x = x + self.conv(x)
        x = self.out_norm(x + 0.5 * self.ff2(x))
        return self.head(x.mean(dim=1))


def conformer_block():
    torch.manual_seed(8)
    return _bn_stats(ConformerClassifier(), 8), SEQUENCE_SHAPE, "sequence"


ZOO = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "resnet18_small": resnet18_small,
    "efficientnet_small": efficientnet_small,
    "transformer_encoder": transformer_encoder,
    "lstm_kws": lstm_kws,
    "gru_kws": gru_kws,
    "unet_small": unet_small,
    "conformer_block": conformer_block,
}

# converted from torch.export's ExportedProgram; the Conformer too, because coremltools 9's TorchScript frontend
# fails on nn.MultiheadAttention's traced graph under torch 2.13 (``int(head_dim)`` of a 1-element tensor)
EXPORTED = {"transformer_encoder", "conformer_block"}


TEST_INPUTS = 128  # the first TEST_INPUTS samples are the test inputs; training uses later ones


def inputs_and_labels(kind: str, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real samples (from index ``start``) of an input kind with their digit labels: an image holds
    three digits (one per channel) and is labelled with the first channel's digit."""
    from sklearn.datasets import load_digits

    from tests.mil_cases import digit_images, digit_sequences

    target = load_digits().target
    if kind == "image":
        return digit_images(start + n, 3, IMAGE_SHAPE[-1])[start:], target[: 3 * (start + n) : 3][start:].astype(np.int64)
    return digit_sequences(start + n, 16, 16)[start:], target[: start + n][start:].astype(np.int64)


@lru_cache(maxsize=None)
def trained(name: str, steps: int = 120) -> tuple[nn.Module, tuple, str]:
    """``ZOO[name]()`` after ``steps`` seeded Adam steps (batch 32) on 448 real samples after the test
    inputs, returned in eval mode. BatchNorm trains in train mode, so its running statistics become the
    training data's moving averages (neither 0/1 nor the statistics of the test inputs)."""
    module, shape, kind = ZOO[name]()
    module.train()
    x, y = inputs_and_labels(kind, 448, start=TEST_INPUTS)  # 3 x 576 <= 1797 digits
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(100)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the caller's thread count (sums in one order)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,))
            loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return module.eval(), shape, kind
