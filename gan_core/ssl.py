"""Self-supervised discriminator: rotation prediction (Chen et al. 2019, 'Self-Supervised GANs via
Auxiliary Rotation Loss'), an option of any noise family whose D declares it (`model.ssl: rotation`).

D learns a second task besides real vs fake: which of 0/90/180/270 degrees an image was turned by.
A linear head on D's features (the input of its shared head, gan_core.layers.DHead, the same
features InfoGAN's Q reads) predicts the turn. D's phase adds beta * cross-entropy on turned real
images (`model.ssl_weight_d`, the paper's 1.0), G's phase alpha * cross-entropy on turned fakes
(`model.ssl_weight_g`, 0.2): G is rewarded for images whose orientation D can read, which keeps
D's features about image structure when the real/fake task alone lets it forget them.

The head is a submodule of D (`D.ssl_head`), so D's optimizer, DDP's all-reduce, checkpoints and
resume include it without code of their own. It carries its two weights as plain floats, which is
how the shared step's terms (gan_core.steps.noise_step) find them; without a head they weigh 0 and
are skipped without being computed, so a run without ssl does exactly what it did before.

Each image gets one turn, k = its position in the batch mod 4: balanced classes at the cost of one
more D forward per phase (the paper turns every image all four ways, 4x the batch). The turns are
torch.rot90 on the device; nothing here reads a value back to the host.
"""
from __future__ import annotations

import torch
from torch import nn

from gan_core.layers import DHead
from gan_core.losses import rotation_loss
from gan_core.phases import Ctx, Term, unwrap

ROTATIONS = 4  # 0, 90, 180, 270 degrees


class RotationHead(nn.Linear):
    """D's features (B, F) -> rotation logits (B, 4); the loss weights ride along (not in state_dict)."""

    def __init__(self, features: int, weight_d: float, weight_g: float):
        super().__init__(features, ROTATIONS)
        self.weight_d, self.weight_g = float(weight_d), float(weight_g)


def dhead(D: nn.Module) -> DHead:
    """The shared head inside D (any wrapper removed); its input is what the rotation head reads."""
    for m in unwrap(D).modules():
        if isinstance(m, DHead):
            return m
    raise TypeError(f"{type(unwrap(D)).__name__} has no gan_core.layers.DHead: model.ssl cannot read its features")


def features(D: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """D's features (B, F) of x: D runs as it is (through DDP in D's phase) and its head's input is
    kept. Running all of D costs one linear layer more than the body alone, and needs no family to
    expose its body under a common name."""
    seen: list[torch.Tensor] = []
    handle = dhead(D).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        D(x, y)
    finally:
        handle.remove()
    return seen[0]


def rotated(x: torch.Tensor, y: torch.Tensor | None = None):
    """(x with image i turned by (i mod 4) x 90 degrees, regrouped by turn; the turns (B,); y regrouped alike)."""
    parts = [torch.rot90(x[k::ROTATIONS], k, dims=(-2, -1)) for k in range(ROTATIONS)]
    turns = torch.cat([torch.full((p.shape[0],), k, dtype=torch.long, device=x.device) for k, p in enumerate(parts)])
    ys = None if y is None else torch.cat([y[k::ROTATIONS] for k in range(ROTATIONS)])
    return torch.cat(parts), turns, ys


def attach(D: nn.Module, channels: int, resolution: int, n_classes: int, weight_d: float, weight_g: float) -> nn.Module:
    """D with a rotation head sized to its features (read from one forward of two blank images in eval
    mode: no batch statistics or spectral-norm vectors change). Returns D."""
    device = next(D.parameters()).device
    x = torch.zeros(2, channels, resolution, resolution, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device) if n_classes else None
    was_training = D.training
    D.eval()
    try:
        with torch.no_grad():
            width = features(D, x, y).shape[1]
    finally:
        D.train(was_training)
    D.ssl_head = RotationHead(width, weight_d, weight_g).to(device)
    return D


def head(ctx: Ctx) -> RotationHead | None:
    return getattr(ctx.d_plain, "ssl_head", None)


def accuracy(logits: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Share of images whose turn the head got right, 0-d on the device (read only when the loop logs)."""
    return (logits.argmax(1) == turns).float().mean().detach()


def _term(ctx: Ctx, x: torch.Tensor, y: torch.Tensor | None, D: nn.Module, metric: str) -> torch.Tensor:
    x, turns, y = rotated(x, y)
    logits = head(ctx)(features(D, x, y))
    ctx.out[metric] = accuracy(logits, turns)
    return rotation_loss(logits, turns)


def real_term(ctx: Ctx) -> torch.Tensor:
    """D's phase: predict the turns of real images (D's DDP wrapper, so the head's gradients are averaged)."""
    return _term(ctx, ctx.v["real"], ctx.v["y"], ctx.state.D, "rot_acc_real")


def fake_term(ctx: Ctx) -> torch.Tensor:
    """G's phase: D (frozen) predicts the turns of G's kept fakes; G learns to make them readable."""
    return _term(ctx, ctx.v["fake"], ctx.v["lat"].y, ctx.d_plain, "rot_acc_fake")


def _weight(name: str):
    return lambda ctx: getattr(head(ctx), name, 0.0)  # 0 without a head: the term is skipped


D_TERM = Term("ssl_d", real_term, _weight("weight_d"))
G_TERM = Term("ssl_g", fake_term, _weight("weight_g"))


@torch.no_grad()
def rotation_accuracy(D: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """D's rotation accuracy on images x in [-1, 1], each turned all four ways (eval mode: batch
    statistics from training, none updated). For tests and scripts: it reads the result back."""
    plain = unwrap(D)
    was_training = plain.training
    plain.eval()
    try:
        hits = 0
        for k in range(ROTATIONS):
            logits = plain.ssl_head(features(plain, torch.rot90(x, k, dims=(-2, -1)), y))
            hits += int((logits.argmax(1) == k).sum())
    finally:
        plain.train(was_training)
    return hits / (ROTATIONS * x.shape[0])
