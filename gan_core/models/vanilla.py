"""Vanilla GAN (Goodfellow et al. 2014): fully connected G and D on flattened images.

G: z -> 4g -> 8g -> 16g -> C*R*R, LeakyReLU(0.2) with batch norm, tanh output.
D: C*R*R -> 8d -> 4d features, LeakyReLU(0.2), then the shared head (mini-batch layer option).
With the default widths (64) that is 256/512/1024 units in G and 512/256 in D.
"""
from __future__ import annotations

import torch
from torch import nn

from gan_core.sections import DataConfig, ModelConfig
from gan_core.latent import LatentSpec
from gan_core.layers import DHead


def _init(module: nn.Module) -> None:
    # small normal weights, as for DCGAN: the default (Kaiming-uniform) init makes D win at once
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, latent: LatentSpec, channels: int, resolution: int, base: int):
        super().__init__()
        self.latent, self.shape = latent, (channels, resolution, resolution)
        dims = [latent.input_dim, 4 * base, 8 * base, 16 * base]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            # no batch norm on the first layer, as in the common reference implementations
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if i else []) + [nn.LeakyReLU(0.2, True)]
        layers += [nn.Linear(dims[-1], channels * resolution * resolution), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class Discriminator(nn.Module):
    def __init__(self, channels: int, resolution: int, base: int, minibatch: str = "none"):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(channels * resolution * resolution, 8 * base),
                                  nn.LeakyReLU(0.2, True), nn.Linear(8 * base, 4 * base), nn.LeakyReLU(0.2, True))
        self.head = DHead(4 * base, minibatch=minibatch)
        _init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x))


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options=None) -> Generator:
    return Generator(LatentSpec(m.z_dim), d.channels, d.resolution, m.g_channels)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options=None) -> Discriminator:
    return Discriminator(d.channels, d.resolution, m.d_channels, m.minibatch)
