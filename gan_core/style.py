"""The layers of style-based generators (gan_core.models.stylegan): the mapping network, truncation
and style mixing of w, per-layer noise inputs, AdaIN (StyleGAN v1) and the modulated/demodulated
convolution and toRGB of StyleGAN2. Plain modules: the family file composes them into G and D."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.equalized import EqualConv2d, EqualLinear, PixelNorm

SQRT2 = math.sqrt(2)  # v2's activation gain: lrelu * sqrt(2) keeps the signal's scale


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


# ---- style plumbing ---------------------------------------------------------------------------------
def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi) -> torch.Tensor:
    """w_avg + psi (w - w_avg): psi < 1 trades variety for typical, better-drawn samples; psi = 0 gives
    the average image for every z. psi a float or a (B, 1) tensor."""
    return w_avg.lerp(w, psi) if isinstance(psi, float) else w_avg + psi * (w - w_avg)


def mix(ws: torch.Tensor, ws2: torch.Tensor, crossover: torch.Tensor) -> torch.Tensor:
    """Style mixing: layer k of sample b reads ws2 where k >= crossover[b] (num_ws: no mixing).
    ws, ws2 (B, num_ws, w_dim); crossover (B,) int64. torch.where, no data-dependent Python, so it
    exports."""
    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
    return torch.where(layer >= crossover[:, None, None], ws2, ws)


class Mapping(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): PixelNorm, then `layers` x (EqualLinear(lr_mul), LeakyReLU(0.2))."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        body: list[nn.Module] = [PixelNorm()]
        for a, b in zip(dims[:-1], dims[1:]):
            body += [EqualLinear(a, b, lr_mul=lr_mul), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*body)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class NoiseInput(nn.Module):
    """x + strength * noise: one (r, r) Gaussian map per sample, scaled per channel (strength init 0)."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        else:
            noise = self.const.to(x.dtype)
        return x + self.strength * noise


# ---- v1: AdaIN --------------------------------------------------------------------------------------
class AdaIN(nn.Module):
    """Instance-normalise each channel, then scale by 1 + s and shift by b, (s, b) = affine(w):
    the style sets every channel's mean and spread, and nothing of the previous style survives."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels, gain=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8)
        s, b = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + s) + b


class LayerV1(nn.Module):
    """[up2] [conv3x3] -> noise -> bias -> lrelu -> AdaIN(w). Without conv: the 4x4 constant's layer."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, conv: bool = True, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = EqualConv2d(cin, cout, 3, bias=False) if conv else None
        self.noise = NoiseInput(cout, resolution)
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.adain = AdaIN(cout, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if self.up:
            x = up2(x)
        if self.conv is not None:
            x = self.conv(x)
        return self.adain(F.leaky_relu(self.noise(x, noise_mode) + self.bias, 0.2), w)


# ---- v2: weight modulation / demodulation -------------------------------------------------------------
class ModulatedConv(nn.Module):
    """k x k conv whose weight is scaled per sample and input channel by s = affine(w) (bias init 1:
    starts as a plain conv); with demodulation each output channel's weights are rescaled to unit
    L2 norm, which normalises the expected output statistics without touching the activations.

    Computed as StyleGAN2's non-fused path: scale the input channels by s, one shared conv, then scale
    each output channel by its demodulation coefficient. The same result as a per-sample weight in a
    grouped conv, which on CPU measured several times slower (groups = batch)."""

    def __init__(self, cin: int, cout: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0, gain=1.0)
        self.scale, self.padding, self.demodulate = 1 / math.sqrt(cin * kernel * kernel), kernel // 2, demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, cin)
        weight = self.weight * self.scale  # (cout, cin, k, k)
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:  # 1 / ||weight * s||_2 per sample and output channel: (B, cout)
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            out = out * d[:, :, None, None]
        return out


class LayerV2(nn.Module):
    """[up2] -> modulated conv3x3 -> noise -> bias -> lrelu * sqrt(2) (the gain keeps unit variance)."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(cin, cout, 3, w_dim)
        self.noise = NoiseInput(cout, resolution)
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.conv(up2(x) if self.up else x, w)
        return F.leaky_relu(self.noise(x, noise_mode) + self.bias, 0.2) * SQRT2


class ToRGBV2(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias: the style also colours the image."""

    def __init__(self, cin: int, channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(cin, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias
