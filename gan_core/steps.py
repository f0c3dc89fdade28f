"""Train steps: one D update then one G update on a batch. Families point at one of these."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gan_core.data import to_float

if TYPE_CHECKING:
    from gan_core.config import TrainConfig
    from gan_core.train import TrainState


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def set_requires_grad(model: torch.nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


def adversarial_step(state: "TrainState", batch, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
    """Noise -> image GAN step (DCGAN recipe): D on real vs G(z).detach(), then G through D.

    G and D are DDP-wrapped when distributed. The G update calls D's plain module with D's
    parameters frozen: D's gradients there would be thrown away, so neither computing nor
    all-reducing them is worth it. Returns detached 0-d tensors; the loop syncs them only when it logs.
    """
    real_u8, _ = batch
    real = to_float(real_u8.to(state.device, non_blocking=True))  # (B, C, R, R) in [-1, 1]
    if state.channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    d_plain = unwrap(state.D)
    z = torch.randn(real.shape[0], unwrap(state.G).z_dim, device=state.device)

    with state.autocast():
        fake = state.G(z)
        loss_d = state.loss.d(state.D(real), state.D(fake.detach()))
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()

    set_requires_grad(d_plain, False)
    with state.autocast():
        loss_g = state.loss.g(d_plain(fake))
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    set_requires_grad(d_plain, True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
