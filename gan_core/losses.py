"""Pure GAN loss functions of discriminator logits. No module state, no side effects.

Each pair returns the mean loss over the batch. `real` / `fake` are D's raw logits, any shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# Non-saturating (Goodfellow 2014, sec. 3): D minimises -log sigmoid(real) - log(1 - sigmoid(fake)),
# G maximises log sigmoid(fake) instead of minimising log(1 - sigmoid(fake)), which saturates early.
# With softplus(x) = log(1 + e^x): -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x).
def nonsat_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def nonsat_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


# Hinge (Lim & Ye 2017; SAGAN, BigGAN): D = E[max(0, 1 - real)] + E[max(0, 1 + fake)], G = -E[fake].
def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g(fake: Tensor) -> Tensor:
    return -fake.mean()


@dataclass(frozen=True)
class LossPair:
    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]


LOSSES: dict[str, LossPair] = {
    "nonsat": LossPair(nonsat_d, nonsat_g),
    "hinge": LossPair(hinge_d, hinge_g),
}
