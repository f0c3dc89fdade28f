"""The train steps of the noise-to-image families, composed of phases (gan_core.phases):
n_critic D updates, each on its own real batch, then one G update.

Each family composes what it adds, with weights from its own settings: WGAN clips the critic after
each D update, WGAN-GP adds a gradient penalty to D, InfoGAN the mutual-information term to both
phases, BigGAN an orthogonal penalty to G. Labels flow to a conditional G and D by themselves.
"""
from __future__ import annotations

import torch

from gan_core import ssl
from gan_core.data import to_float
from gan_core.losses import gradient_penalty, info_loss, orthogonal_penalty
from gan_core.phases import Ctx, Phase, Step, Term, set_requires_grad, unwrap

__all__ = ["adversarial_step", "clipped_step", "images", "info_step", "noise_step", "ortho_step", "ortho_weights",
           "penalty_step", "set_requires_grad", "split_d", "unwrap"]


def split_d(out) -> tuple[torch.Tensor, tuple | None]:
    """D's output -> (logits, Q's (code logits, code means) or None)."""
    return (out[0], out[1:]) if isinstance(out, tuple) else (out, None)


def ortho_weights(G: torch.nn.Module) -> list[torch.Tensor]:
    """G's conv/linear weights for the orthogonal penalty; embeddings are left out, as in BigGAN."""
    return [p for n, p in G.named_parameters() if p.dim() >= 2 and "embed" not in n and "shared" not in n]


def images(ctx: Ctx, key: str = "images") -> torch.Tensor:
    """The current batch's uint8 images as float in [-1, 1] on the training device (NHWC if asked)."""
    x = to_float(ctx.batch[key].to(ctx.state.device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if ctx.state.channels_last else x


# ---- D: real batch vs a fresh fake, per batch of the step ------------------------------------------
def d_loss(ctx: Ctx) -> torch.Tensor:
    """Draws the latents (fakes get the real batch's classes) and G's fake; keeps the fake's graph
    only on the last batch, whose fake G's phase reuses."""
    state = ctx.state
    spec = unwrap(state.G).latent
    real, labels = images(ctx), ctx.batch.get("labels")
    y = labels.to(state.device, non_blocking=True) if spec.conditional else None
    # the dataset's labels were checked against its class count when it was prepared; checking them
    # again here would wait for the device every step
    lat = spec.sample(real.shape[0], labels=y, device=state.device, check_labels=False)
    with torch.set_grad_enabled(ctx.last):
        fake = state.G(*lat.inputs)
    logit_real, _ = split_d(state.D(real, y))
    logit_fake, q = split_d(state.D(fake.detach(), lat.y))
    ctx.v.update(real=real, y=y, lat=lat, fake=fake, q=q, logit_real=logit_real, logit_fake=logit_fake)
    return state.loss.d(logit_real, logit_fake)


def gp_term(ctx: Ctx) -> torch.Tensor:
    """WGAN-GP: D's gradient norm pulled to 1 on random interpolates of real and fake."""
    v, d_plain = ctx.v, ctx.d_plain
    eps = torch.rand(v["real"].shape[0], 1, 1, 1, device=ctx.state.device)
    return gradient_penalty(lambda x: split_d(d_plain(x, v["y"]))[0], v["real"], v["fake"].detach(), eps)


def info_term(ctx: Ctx) -> torch.Tensor | None:
    """InfoGAN: Q (sharing D's body) reads the codes back from G's image; None without a Q head."""
    q, lat = ctx.v["q"], ctx.v["lat"]
    return None if q is None else info_loss(*q, lat.cat, lat.cont)


def clip_weights(ctx: Ctx) -> None:
    """WGAN's Lipschitz constraint: every critic parameter clamped to [-clip, clip] after its update."""
    clip = ctx.state.options.clip
    if clip:
        with torch.no_grad():
            for p in ctx.d_plain.parameters():
                p.clamp_(-clip, clip)


def wasserstein(ctx: Ctx) -> dict:
    """The critic's estimate of the earth-mover distance, for Wasserstein losses."""
    if ctx.state.loss.name != "wasserstein":
        return {}
    return {"wasserstein": (ctx.v["logit_real"].mean() - ctx.v["logit_fake"].mean()).detach()}


# ---- G: fool the frozen D with the kept fake ---------------------------------------------------------
def g_loss(ctx: Ctx) -> torch.Tensor:
    logit, q = split_d(ctx.d_plain(ctx.v["fake"], ctx.v["lat"].y))
    ctx.v["q"] = q
    return ctx.state.loss.g(logit)


def ortho_term(ctx: Ctx) -> torch.Tensor:
    """BigGAN: G's weights kept close to orthogonal (off-diagonal Gram entries only)."""
    return orthogonal_penalty(ortho_weights(ctx.g_plain))


def _option(name: str):
    """A term's weight, read from the family's own settings (wgan_gp's gp_lambda, ...)."""
    return lambda ctx: getattr(ctx.state.options, name)


def noise_step(d_terms: tuple[Term, ...] = (), g_terms: tuple[Term, ...] = (), after=None) -> Step:
    """n_critic D phases (one per batch, each with its own fake) and one G phase on the last fake."""
    # every noise step carries the rotation terms of model.ssl (gan_core/ssl.py): weight 0, so skipped, without
    return Step((Phase("D", d_loss, per_batch=True, after=after, report=wasserstein, terms=(*d_terms, ssl.D_TERM)),
                 Phase("G", g_loss, terms=(*g_terms, ssl.G_TERM))))


adversarial_step = noise_step()  # vanilla, dcgan, cgan
clipped_step = noise_step(after=clip_weights)  # wgan
penalty_step = noise_step(d_terms=(Term("gp", gp_term, _option("gp_lambda")),))  # wgan_gp
info_step = noise_step(d_terms=(Term("info", info_term, _option("info_lambda"), report=False),),  # infogan
                       g_terms=(Term("info", info_term, _option("info_lambda")),))
ortho_step = noise_step(g_terms=(Term("ortho", ortho_term, _option("ortho_reg")),))  # biggan
