"""BigGAN (Brock et al. 2019), scaled to small images.

G: hierarchical z (split into one chunk for the 4x4 input and one per residual up-block); each
block's class-conditional batch norms read [shared class embedding, its z chunk]; a SAGAN
self-attention block at `model.attention` resolution; spectral norm on every conv/linear.
D: residual down-blocks with spectral norm, self-attention at the same resolution, global sum
pooling, and the shared head with a projection term for the class. Trained with the hinge loss;
`train.ortho_reg` turns on BigGAN's orthogonal regularisation of G.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import ConfigError, DataConfig, ModelConfig
from gan_core.latent import LatentSpec
from gan_core.layers import ConditionalBatchNorm2d, DHead, SelfAttention, maybe_sn
from gan_core.models.dcgan import widths
from gan_core.options import integer, number


def sn_ortho(layer: nn.Module) -> nn.Module:
    """BigGAN's layer recipe: orthogonal init, zero bias, then spectral norm (whose power
    iteration starts from the initialised weight)."""
    nn.init.orthogonal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return maybe_sn(layer, True)


def conv(cin: int, cout: int, k: int = 3) -> nn.Module:
    return sn_ortho(nn.Conv2d(cin, cout, k, padding=k // 2))


def z_chunks(z_dim: int, blocks: int) -> list[int]:
    """Sizes of z's chunks: one for the input layer and one per block; the remainder goes first."""
    size = z_dim // (blocks + 1)
    return [z_dim - size * blocks] + [size] * blocks


class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv with a 1x1-conv skip, both paths upsampled 2x (nearest)."""

    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.bn1, self.bn2 = ConditionalBatchNorm2d(cin, cond_dim), ConditionalBatchNorm2d(cout, cond_dim)
        self.conv1, self.conv2, self.skip = conv(cin, cout), conv(cout, cout), conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
    def __init__(self, latent: LatentSpec, channels: int, resolution: int, base: int, embed_dim: int, attention: int):
        super().__init__()
        self.latent, self.resolution = latent, resolution
        chs = widths(2 * base, resolution) + [base]  # 4x4 width ... output-stage width
        blocks = len(chs) - 1
        self.chunks = z_chunks(latent.z_dim, blocks)
        self.shared = nn.Embedding(latent.n_classes, embed_dim)  # one embedding, shared by every block
        self.linear = sn_ortho(nn.Linear(self.chunks[0], chs[0] * 16))
        self.blocks = nn.ModuleList(GBlock(a, b, embed_dim + self.chunks[i + 1])
                                    for i, (a, b) in enumerate(zip(chs[:-1], chs[1:])))
        # attention after the block whose output has that resolution (block i outputs 8 * 2^i)
        at = int(math.log2(attention)) - 3 if attention else -1
        self.attn_after = at if 0 <= at < blocks else -1
        self.attn = SelfAttention(chs[at + 1]) if self.attn_after >= 0 else None
        self.out = nn.Sequential(nn.BatchNorm2d(chs[-1]), nn.ReLU(True), conv(chs[-1], channels), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zs = torch.split(z, self.chunks, dim=1)
        e = self.shared(y)
        h = self.linear(zs[0]).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([e, zs[i + 1]], dim=1))
            if i == self.attn_after:
                h = self.attn(h)
        return self.out(h)


class DBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-avgpool with a 1x1-conv-avgpool skip. The first block skips the
    leading ReLU, so the image itself is not rectified."""

    def __init__(self, cin: int, cout: int, preactivation: bool):
        super().__init__()
        self.preactivation = preactivation
        self.conv1, self.conv2, self.skip = conv(cin, cout), conv(cout, cout), conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + F.avg_pool2d(self.skip(x), 2)


class Discriminator(nn.Module):
    def __init__(self, channels: int, resolution: int, base: int, n_classes: int, attention: int,
                 minibatch: str = "none"):
        super().__init__()
        chs = [channels] + list(reversed(widths(base, resolution)))  # input, then each block's output
        self.blocks = nn.ModuleList(DBlock(a, b, preactivation=i > 0) for i, (a, b) in enumerate(zip(chs[:-1], chs[1:])))
        # block i outputs resolution R / 2^(i+1): attention after the one that reaches `attention`
        at = int(math.log2(resolution // attention)) - 1 if attention and attention < resolution else -1
        self.attn_after = at if 0 <= at < len(self.blocks) else -1
        self.attn = SelfAttention(chs[at + 1]) if self.attn_after >= 0 else None
        self.head = DHead(chs[-1], minibatch=minibatch, n_classes=n_classes, sn=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_after:
                h = self.attn(h)
        return self.head(F.relu(h).sum(dim=(2, 3)), y)  # global sum pooling, as in BigGAN


@dataclass(frozen=True)
class Options:
    """biggan's settings (params `family: {biggan: {...}}`)."""
    embed_dim: int = 32  # the shared class embedding, concatenated with each z chunk
    attention: int = 8  # resolution of the self-attention block (0: none)
    ortho_reg: float = 1e-4  # orthogonal regularisation of G's weights (the paper's 1e-4; 0: off)

    def __post_init__(self):
        integer("embed_dim", self.embed_dim, 1)
        integer("attention", self.attention)
        if self.attention & (self.attention - 1):
            raise ConfigError("family.attention", f"must be 0 or a power of two, got {self.attention}")
        number("ortho_reg", self.ortho_reg)


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> Generator:
    o = options or Options()
    if o.attention and not 8 <= o.attention <= d.resolution:
        raise ConfigError("family.biggan.attention",
                          f"must be 0 or in [8, data.resolution={d.resolution}], got {o.attention}")
    return Generator(LatentSpec(m.z_dim, n_classes), d.channels, d.resolution, m.g_channels, o.embed_dim, o.attention)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> Discriminator:
    o = options or Options()
    return Discriminator(d.channels, d.resolution, m.d_channels, n_classes, o.attention, m.minibatch)
