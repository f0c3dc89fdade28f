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


# Wasserstein (Arjovsky et al. 2017): the critic maximises E[D(real)] - E[D(fake)], an estimate of
# the earth-mover distance when D is 1-Lipschitz (weight clipping or a gradient penalty keeps it so).
def wasserstein_d(real: Tensor, fake: Tensor) -> Tensor:
    return fake.mean() - real.mean()


def wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


# Least squares (Mao et al. 2017, a-b-c = 0-1-1; CycleGAN's adversarial loss): D = E[(real - 1)^2] +
# E[fake^2], G = E[(fake - 1)^2]. Gradients grow with the distance from the target instead of
# vanishing for fakes D already rejects. The paper's 1/2 factors are left to callers (CycleGAN halves D).
def lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return (real - 1.0).pow(2).mean() + fake.pow(2).mean()


def lsgan_g(fake: Tensor) -> Tensor:
    return (fake - 1.0).pow(2).mean()


@dataclass(frozen=True)
class LossPair:
    name: str
    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]


LOSSES: dict[str, LossPair] = {
    "nonsat": LossPair("nonsat", nonsat_d, nonsat_g),
    "hinge": LossPair("hinge", hinge_d, hinge_g),
    "wasserstein": LossPair("wasserstein", wasserstein_d, wasserstein_g),
    "lsgan": LossPair("lsgan", lsgan_d, lsgan_g),
}


# ---- regularisers ------------------------------------------------------------------------------
def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x)||_2 - 1)^2] at x = eps * real + (1 - eps) * fake,
    eps ~ U[0, 1] per sample (passed in, so the function stays pure). create_graph lets the penalty
    itself be differentiated with respect to D's weights."""
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def r1_penalty(critic: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 at real x; the caller weights it gamma / 2.
    Pushes D's surface flat on the data, so G is not chased by gradients that overshoot it."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return grad.float().pow(2).sum(dim=(1, 2, 3)).mean()


def orthogonal_penalty(weights: list[Tensor]) -> Tensor:
    """BigGAN's orthogonal regularisation (Brock et al. 2019, eq. 3): ||W W^T * (1 - I)||_F^2 per
    weight (rows = output units), which pushes filters apart without constraining their norms."""
    total = weights[0].new_zeros(())
    for w in weights:
        w = w.flatten(1)
        gram = w @ w.t()
        total = total + (gram * (1 - torch.eye(len(gram), device=w.device, dtype=w.dtype))).pow(2).sum()
    return total


def info_loss(cat_logits: Tensor, cont_mean: Tensor, cat: Tensor | None, cont: Tensor | None) -> Tensor:
    """InfoGAN's variational lower bound on I(c; G(z, c)) (Chen et al. 2016), negated: cross-entropy
    of Q's categorical prediction plus, for continuous codes, a unit-variance Gaussian NLL
    (mean squared error up to a constant). Minimising it maximises the mutual information."""
    loss = cat_logits.new_zeros(())
    if cat is not None:
        loss = loss + F.cross_entropy(cat_logits, cat)
    if cont is not None:
        loss = loss + 0.5 * (cont_mean - cont).pow(2).sum(1).mean()
    return loss


def rotation_loss(logits: Tensor, turns: Tensor) -> Tensor:
    """Self-supervised GAN's auxiliary loss (Chen et al. 2019, eq. 2): cross-entropy of D's rotation
    head against the quarter turns (0-3) the images were given."""
    return F.cross_entropy(logits, turns)
