"""DCGAN (Radford et al. 2016): transposed-conv generator, strided-conv discriminator,
batch norm, ReLU in G, LeakyReLU(0.2) in D, tanh output, N(0, 0.02) init.

Works at any power-of-two resolution >= 8: G starts from a 4x4 map and doubles it; D halves the
image down to 4x4. Widths double per halving of resolution, capped at 512.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gan_core.config import DataConfig, ModelConfig

MAX_WIDTH = 512


def widths(base: int, resolution: int) -> list[int]:
    """Channels at resolutions 4, 8, ..., resolution/2 ... listed from the 4x4 stage upwards."""
    n = int(math.log2(resolution)) - 2  # number of 2x stages between 4x4 and the output
    return [min(base * 2 ** (n - 1 - i), MAX_WIDTH) for i in range(n)]


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's init: conv weights N(0, 0.02), batch-norm gamma N(1, 0.02), beta 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, channels: int, resolution: int, base: int):
        super().__init__()
        self.z_dim, self.channels, self.resolution = z_dim, channels, resolution
        w = widths(base, resolution)
        layers: list[nn.Module] = [  # (B, z, 1, 1) -> (B, w0, 4, 4)
            nn.ConvTranspose2d(z_dim, w[0], 4, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):  # each doubles H and W
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # last doubling -> image
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, z_dim) -> images (B, C, R, R) in [-1, 1]
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, channels: int, resolution: int, base: int):
        super().__init__()
        w = list(reversed(widths(base, resolution)))  # from the input resolution downwards
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN on input
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)  # (B, C, R, R) -> (B, w[-1], 4, 4)
        self.head = nn.Conv2d(w[-1], 1, 4, 1, 0)  # -> (B, 1, 1, 1)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, R, R) in [-1, 1] -> logits (B,)
        return self.head(self.body(x)).flatten()


def build_generator(m: ModelConfig, d: DataConfig) -> Generator:
    return Generator(m.z_dim, d.channels, d.resolution, m.g_channels)


def build_discriminator(m: ModelConfig, d: DataConfig) -> Discriminator:
    return Discriminator(d.channels, d.resolution, m.d_channels)
