"""The layers Progressive Growing and StyleGAN share (Karras et al. 2018, 2019).

Equalised learning rate: weights are stored as N(0, 1) and scaled at run time by He's constant
sqrt(2 / fan_in) (times `lr_mul`), instead of being initialised with that scale. Adam normalises
each parameter's step by its own gradient magnitude, so with the scale outside the parameter every
layer learns at the same speed whatever its fan-in. `lr_mul` slows a layer further (StyleGAN's
mapping network uses 0.01): the stored weight is N(0, 1 / lr_mul) and both weight and bias are
multiplied by lr_mul, so Adam's fixed-size steps move the effective weight lr_mul times slower.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EqualLinear(nn.Module):
    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init) / lr_mul))
        self.scale, self.lr_mul = gain / math.sqrt(cin) * lr_mul, lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A same-padded k x k convolution (stride 1) with an equalised learning rate."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.padding = gain / math.sqrt(cin * kernel * kernel), kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit average square (ProGAN sec. 4.2): keeps G's signal
    magnitudes from escalating when G and D compete, without batch statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class StddevMap(nn.Module):
    """ProGAN's mini-batch standard deviation as one extra constant feature map before D's last
    convolution (sec. 3): per group of `group` samples, the std of every feature at every pixel,
    averaged into one number, broadcast over H x W. (gan_core.layers.MinibatchStdDev is the same
    statistic appended to D's flat features, for the other families.)"""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.group if b % self.group == 0 else b  # groups must tile the batch
        y = x.view(g, -1, c, h, w)
        std = y.var(0, unbiased=False).add(1e-8).sqrt()  # (B/g, C, H, W)
        stat = std.mean(dim=(1, 2, 3))  # (B/g,)
        stat = stat.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w)  # sample i is in group i % (B/g)
        return torch.cat([x, stat], dim=1)
