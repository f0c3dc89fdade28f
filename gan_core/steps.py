"""The train step every family uses: n_critic D updates, then one G update.

What the families change is declared by their networks and config, not by copies of this step:
labels flow to a conditional G and D, InfoGAN's Q head adds the mutual-information term, a
Wasserstein critic gets weight clipping or a gradient penalty, BigGAN's G an orthogonal penalty.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gan_core.data import to_float
from gan_core.losses import gradient_penalty, info_loss, orthogonal_penalty

if TYPE_CHECKING:
    from gan_core.config import TrainConfig
    from gan_core.train import TrainState


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def set_requires_grad(model: torch.nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


def split_d(out) -> tuple[torch.Tensor, tuple | None]:
    """D's output -> (logits, Q's (code logits, code means) or None)."""
    return (out[0], out[1:]) if isinstance(out, tuple) else (out, None)


def ortho_weights(G: torch.nn.Module) -> list[torch.Tensor]:
    """G's conv/linear weights for the orthogonal penalty; embeddings are left out, as in BigGAN."""
    return [p for n, p in G.named_parameters() if p.dim() >= 2 and "embed" not in n and "shared" not in n]


def adversarial_step(state: "TrainState", batches: list, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
    """One G step after len(batches) == n_critic D steps, each on its own real batch.

    The fake batch of the last D step is kept (with its graph) for the G update, which is
    correct because G has not changed since it was drawn, and saves a G forward. The G update
    calls D's plain module with D frozen: D's gradients there would be thrown away, so neither
    computing nor all-reducing them is worth it. Returns detached 0-d tensors; the loop syncs
    them only when it logs.
    """
    G_plain, d_plain = unwrap(state.G), unwrap(state.D)
    spec = G_plain.latent
    out: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        real, labels = to_float(batch["images"].to(state.device, non_blocking=True)), batch.get("labels")  # [-1, 1]
        if state.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        y = labels.to(state.device) if spec.conditional else None  # fakes get the real batch's classes
        lat = spec.sample(real.shape[0], labels=y, device=state.device)
        keep = i == len(batches) - 1
        with state.autocast():
            with torch.set_grad_enabled(keep):
                fake = state.G(*lat.inputs)
            logit_real, _ = split_d(state.D(real, y))
            logit_fake, q = split_d(state.D(fake.detach(), lat.y))
            loss_d = state.loss.d(logit_real, logit_fake)
            if cfg.gp_lambda:
                eps = torch.rand(real.shape[0], 1, 1, 1, device=state.device)
                gp = gradient_penalty(lambda x: split_d(d_plain(x, y))[0], real, fake.detach(), eps)
                loss_d = loss_d + cfg.gp_lambda * gp
                out["gp"] = gp.detach()
            if q is not None:  # Q learns to read the codes back from G's images
                loss_d = loss_d + cfg.info_lambda * info_loss(*q, lat.cat, lat.cont)
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        state.opt_d.step()
        if cfg.clip:
            with torch.no_grad():
                for p in d_plain.parameters():
                    p.clamp_(-cfg.clip, cfg.clip)
    if state.loss.name == "wasserstein":  # the critic's estimate of the earth-mover distance
        out["wasserstein"] = (logit_real.mean() - logit_fake.mean()).detach()

    set_requires_grad(d_plain, False)
    with state.autocast():
        logit_g, q = split_d(d_plain(fake, lat.y))
        loss_g = state.loss.g(logit_g)
        if q is not None:
            info = info_loss(*q, lat.cat, lat.cont)
            loss_g = loss_g + cfg.info_lambda * info
            out["info"] = info.detach()
        if cfg.ortho_reg:
            ortho = orthogonal_penalty(ortho_weights(G_plain))
            loss_g = loss_g + cfg.ortho_reg * ortho
            out["ortho"] = ortho.detach()
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    set_requires_grad(d_plain, True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), **out}
