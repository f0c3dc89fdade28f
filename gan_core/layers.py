"""Layers the families share: the discriminator head (mini-batch layers, projection, InfoGAN's Q),
self-attention, class-conditional batch norm and spectral-norm wrapping.

Every discriminator is `body -> (B, F) features -> DHead`, which is what makes mini-batch
discrimination, projection conditioning and the Q head switchable on any D without copies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import MINIBATCH


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) when enabled: the layer's largest singular value
    is kept at 1 by a power iteration per forward, which bounds D's Lipschitz constant."""
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, sec. 3.2: each sample gets `kernels` features saying how close it is
    to the other samples of its batch, so D can see a collapsed G producing near-copies.

    f (B, F) -> M = f @ T (B, kernels, dims); c_ij = exp(-||M_i - M_j||_1) per kernel;
    o_i = sum_{j != i} c_ij; returns concat(f, o) (B, F + kernels).
    """

    def __init__(self, in_features: int, kernels: int = 32, dims: int = 8):
        super().__init__()
        self.kernels, self.dims = kernels, dims
        self.T = nn.Parameter(torch.randn(in_features, kernels * dims) * 0.1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        m = (f @ self.T).view(-1, self.kernels, self.dims)  # (B, K, D)
        l1 = (m[:, None] - m[None]).abs().sum(-1)  # (B, B, K)
        o = torch.exp(-l1).sum(1) - 1.0  # exp(0) = 1 is each sample's distance to itself
        return torch.cat([f, o], dim=1)


class MinibatchStdDev(nn.Module):
    """Karras et al. 2018 (ProGAN), sec. 3: the mean over features of the per-feature standard
    deviation across a group of samples, appended as one more feature. Low when G collapses."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b = f.shape[0]
        g = self.group if b % self.group == 0 else b  # groups must tile the batch
        std = f.view(g, -1, *f.shape[1:]).var(0, unbiased=False).add(1e-8).sqrt()  # (B/g, F)
        stat = std.mean(dim=tuple(range(1, std.dim())))  # (B/g,)
        return torch.cat([f, stat.repeat(g)[:, None]], dim=1)  # sample i is in group i % (B/g)


def minibatch_layer(kind: str, features: int) -> tuple[nn.Module, int]:
    """The selected mini-batch layer and the feature count after it."""
    if kind == "mbd":
        layer = MinibatchDiscrimination(features)
        return layer, features + layer.kernels
    if kind == "stddev":
        return MinibatchStdDev(), features + 1
    if kind == "none":
        return nn.Identity(), features
    raise ValueError(f"model.minibatch: {kind!r} not in {MINIBATCH}")


def _small(embed: nn.Embedding) -> nn.Embedding:
    # N(0, 0.02) like the DCGAN layers around it: the default N(0, 1) makes the projection term
    # dominate the logits at initialisation
    nn.init.normal_(embed.weight, 0.0, 0.02)
    return embed


class DHead(nn.Module):
    """Features (B, F) -> logits (B,), plus, when asked:
    - n_classes > 0: a projection term <embed(y), h> (Miyato & Koyama 2018), so D judges
      "real image of class y" rather than "real image";
    - code_cat / code_cont > 0: InfoGAN's Q head on the same features; forward then returns
      (logits, categorical-code logits (B, code_cat), continuous-code means (B, code_cont))."""

    def __init__(self, features: int, minibatch: str = "none", n_classes: int = 0, code_cat: int = 0,
                 code_cont: int = 0, sn: bool = False):
        super().__init__()
        self.minibatch, width = minibatch_layer(minibatch, features)
        self.linear = maybe_sn(nn.Linear(width, 1), sn)
        self.embed = maybe_sn(_small(nn.Embedding(n_classes, width)), sn) if n_classes else None
        self.q = None
        if code_cat or code_cont:
            self.code_cat, self.code_cont = code_cat, code_cont
            self.q = nn.Sequential(nn.Linear(features, 128), nn.LeakyReLU(0.2, True),
                                   nn.Linear(128, code_cat + code_cont))

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None):
        f = self.minibatch(h)
        out = self.linear(f).flatten()
        if self.embed is not None:
            if y is None:
                raise ValueError("a conditional discriminator needs labels y")
            out = out + (self.embed(y) * f).sum(1)
        if self.q is None:
            return out
        q = self.q(h)  # the codes are a property of one image: Q must not see the batch layer
        return out, q[:, :self.code_cat], q[:, self.code_cat:]


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019) as used by BigGAN: every position attends to all
    others, so distant parts of an image can agree. gamma starts at 0: the block begins as identity."""

    def __init__(self, channels: int, sn: bool = True):
        super().__init__()
        c8 = max(channels // 8, 1)
        self.theta = maybe_sn(nn.Conv2d(channels, c8, 1, bias=False), sn)
        self.phi = maybe_sn(nn.Conv2d(channels, c8, 1, bias=False), sn)
        self.g = maybe_sn(nn.Conv2d(channels, channels // 2, 1, bias=False), sn)
        self.o = maybe_sn(nn.Conv2d(channels // 2, channels, 1, bias=False), sn)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, c8, HW)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # keys/values pooled 2x: 4x cheaper, as in BigGAN
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, HW/4)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, HW, HW/4)
        o = self.o((g @ attn.transpose(1, 2)).view(b, c // 2, h, w))
        return x + self.gamma * o


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are linear functions of a conditioning vector (the shared
    class embedding concatenated with a chunk of z, in BigGAN). Gain is 1 + linear so it starts at 1."""

    def __init__(self, channels: int, cond_dim: int, sn: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = maybe_sn(nn.Linear(cond_dim, channels, bias=False), sn)
        self.bias = maybe_sn(nn.Linear(cond_dim, channels, bias=False), sn)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(cond)[:, :, None, None]
        return self.bn(x) * gain + self.bias(cond)[:, :, None, None]
