"""Adversarial autoencoder (Makhzani et al. 2016): an encoder and a decoder trained to reconstruct,
and a discriminator on the latent code that pushes the aggregated code distribution q(z) toward a
chosen prior p(z), so decoding prior samples draws images.

Prior (the table's two entries share this file):
- `aae`: Gaussian N(0, I) in z_dim dimensions; trains on any image dataset.
- `aae_mix`: a mixture of Gaussians with one component per class of a labelled dataset. Component k
  is N(mu_k, I) with mu_k on a circle in the first two code dimensions, at angle 2 pi k / K and radius
  2 / sin(pi / K), so neighbouring means lie 4 standard deviations apart (the paper's 2-D mixture,
  lifted to z_dim dimensions with unit variance in all of them, so no code dimension is squeezed).
  As in the paper's section 2.3, D also reads the one-hot label: the code of an image of class k is
  judged against samples of component k, which ties each component to its class; decoding
  component k then draws class k (the class_acc metric checks it).

Networks: the encoder is DCGAN's strided conv body + a linear map to z_dim; the decoder is DCGAN's
generator reading the code; D an MLP on (code, one-hot label). Encoder and decoder are one module
(`Autoencoder`, TrainState's G) whose training forward returns codes and reconstructions, so DDP
sees one forward and averages both networks' gradients; its inference forms are `PriorDecoder`
(prior noise -> image: what is sampled, evaluated and exported as the generator) and `Encoder`
(images -> codes: exported beside it, run by `ganpipe encode`).

Step: the paper alternates a reconstruction phase (E, Dec) and a regularisation phase (D, then E
fooling D). Here one forward of E and Dec per batch feeds D's update (prior samples real, codes
fake), then one update of E and Dec on reconstruction + adv_lambda x E's adversarial loss against
the updated D: the same three losses in the paper's order, with E's two losses in one optimizer step
(two steps would leave the decoder without gradients in the second, which DDP refuses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.inference import run_batched, set_mode
from gan_core.latent import LatentSpec
from gan_core.metrics.latent_match import mmd_test
from gan_core.models.dcgan import Generator, conv_body, dcgan_init
from gan_core.options import choice, integer, number
from gan_core.phases import Ctx, Phase, Step, Term, unwrap
from gan_core.sections import DataConfig, ModelConfig
from gan_core.steps import images

RECON = ("l2", "l1")
# Adam 1e-3 for both (beta1 0.5 as DCGAN): at the DCGAN default 2e-4 the code cloud chased D around (its
# mean hopping by +-1 every 100 steps, spread 0.1-0.4 against the prior's 1) and the held-out MMD to
# N(0, I) did not fall in 400 steps on the digits (0.198 -> 0.202); at 1e-3 it fell to 0.032 (5e-5: no
# movement at all; adv_lambda 5 at 2e-4: 0.279). Measured 2026-11-24, seed 0, 8 px, z_dim 8, width 32.
DEFAULTS = {"train": {"lr_g": 1e-3, "lr_d": 1e-3}}


@dataclass(frozen=True)
class Options:
    recon: str = "l2"  # reconstruction loss: l2 (the paper's Euclidean loss) | l1
    adv_lambda: float = 1.0  # weight of E's adversarial loss beside the reconstruction loss
    d_layers: int = 2  # hidden layers of the code discriminator (the paper's MLPs: 2 of 1000 units)
    mmd_permutations: int = 200  # permutations of the evaluation's MMD test (p-value resolution 1/201)

    def __post_init__(self):
        choice("recon", self.recon, RECON)
        number("adv_lambda", self.adv_lambda)
        integer("d_layers", self.d_layers, 1)
        integer("mmd_permutations", self.mmd_permutations, 1)


def mixture_means(n_classes: int, z_dim: int) -> torch.Tensor:
    """(K, z_dim) component means on a circle in the first two dimensions, neighbours 4 apart; (0, z_dim)
    for the Gaussian prior (K = 0)."""
    means = torch.zeros(n_classes, z_dim)
    if n_classes:
        radius = 2.0 / math.sin(math.pi / n_classes)
        angle = 2 * math.pi * torch.arange(n_classes, dtype=torch.float32) / n_classes
        means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
    return means


class Prior(nn.Module):
    """Standard normal noise (and a component per row for the mixture) -> prior samples."""

    def __init__(self, n_classes: int, z_dim: int):
        super().__init__()
        self.register_buffer("means", mixture_means(n_classes, z_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return z if y is None or len(self.means) == 0 else z + self.means[y]


class Encoder(nn.Module):
    """(B, C, R, R) in [-1, 1] -> codes (B, z_dim): DCGAN's conv body, then a linear map."""

    def __init__(self, channels: int, resolution: int, base: int, z_dim: int):
        super().__init__()
        self.body, features = conv_body(channels, resolution, base)
        self.out = nn.Linear(features, z_dim)
        dcgan_init(self)
        nn.init.normal_(self.out.weight, 0.0, 1.0 / math.sqrt(features))  # codes of unit scale from the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class Autoencoder(nn.Module):
    """TrainState's G: encoder, decoder and the prior. forward(images) -> (codes, reconstructions)."""

    def __init__(self, latent: LatentSpec, channels: int, resolution: int, g_base: int, e_base: int):
        super().__init__()
        self.latent = latent
        self.encoder = Encoder(channels, resolution, e_base, latent.z_dim)
        self.decoder = Generator(LatentSpec(latent.z_dim), channels, resolution, g_base)
        self.prior = Prior(latent.n_classes, latent.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


class PriorDecoder(nn.Module):
    """The generator that is sampled, evaluated and exported: G(z) (Gaussian prior) or G(z, y) (the
    mixture's component y) = decoder(prior sample). Shares the autoencoder's modules."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.latent, self.prior, self.decoder = ae.latent, ae.prior, ae.decoder

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.prior(z, y))


class CodeDiscriminator(nn.Module):
    """(codes (B, z_dim), labels (B,) or None) -> logits (B,): an MLP; with classes, the one-hot label
    is concatenated to the code (the paper's label-regularised AAE)."""

    def __init__(self, z_dim: int, n_classes: int, width: int, layers: int):
        super().__init__()
        self.n_classes = n_classes
        dims = [z_dim + n_classes] + [width] * layers
        body: list[nn.Module] = []
        for cin, cout in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(cin, cout), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*body, nn.Linear(dims[-1], 1))

    def forward(self, code: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:  # one-hot by comparison (F.one_hot checks its range with a host sync)
            code = torch.cat([code, (y[:, None] == torch.arange(self.n_classes, device=y.device)).to(code.dtype)], 1)
        return self.net(code).squeeze(1)


# ---- the train step -------------------------------------------------------------------------------
def _opts(ctx: Ctx) -> Options:
    return ctx.state.options if ctx.state.options is not None else Options()


def _encode_batch(ctx: Ctx) -> None:
    """One forward of E and Dec (through G's wrapper, for DDP) that both phases read."""
    state = ctx.state
    x, labels = images(ctx), ctx.batch.get("labels")
    y = labels.to(state.device, non_blocking=True) if state.n_classes else None
    with state.autocast():
        code, rec = state.G(x)
    ctx.v.update(x=x, y=y, code=code, rec=rec)


def _d_loss(ctx: Ctx) -> torch.Tensor:
    """Prior samples (of each image's class component, for the mixture) real, E's codes fake."""
    state, v = ctx.state, ctx.v
    prior = unwrap(state.G).prior(torch.randn_like(v["code"], dtype=torch.float32), v["y"])
    return state.loss.d(state.D(prior, v["y"]), state.D(v["code"].detach(), v["y"]))


def _e_fools_d(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["code"], ctx.v["y"]))


def _recon(ctx: Ctx) -> torch.Tensor:
    diff = ctx.v["rec"].float() - ctx.v["x"]
    return diff.abs().mean() if _opts(ctx).recon == "l1" else diff.pow(2).mean()


def _report(ctx: Ctx) -> dict:
    # by hand: torch's CPU std reads a scalar back (aten::item), a host sync every step
    c = ctx.v["code"].detach().float()
    return {"code_std": (c - c.mean()).pow(2).mean().sqrt()}


# D on codes once per step, then E and Dec: loss_g = adv_lambda * E's adversarial loss + recon.
step = Step((
    Phase("D", _d_loss),
    Phase("G", lambda ctx: _opts(ctx).adv_lambda * _e_fools_d(ctx),
          terms=(Term("recon", _recon, lambda ctx: 1.0),), report=_report),
), prepare=_encode_batch)


# ---- builders, inference, evaluation --------------------------------------------------------------
def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> Autoencoder:
    return Autoencoder(LatentSpec(m.z_dim, n_classes), d.channels, d.resolution, m.g_channels, m.d_channels)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> CodeDiscriminator:
    o = options or Options()
    return CodeDiscriminator(m.z_dim, n_classes, 4 * m.d_channels, o.d_layers)


def infer(G: nn.Module) -> PriorDecoder:
    """Family.infer: the prior-to-image generator around G (or G_ema), sharing its weights."""
    return PriorDecoder(unwrap(G))


def encoder(G: nn.Module) -> nn.Module:
    """Family.encode: the images-to-codes module of G (or G_ema), shared, not copied."""
    return unwrap(G).encoder


@torch.no_grad()
def score_codes(G: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, options: Options | None,
                seed: int) -> dict[str, float]:
    """Held-out images x (n, C, R, R) in [-1, 1] -> recon_mse (per pixel, in [-1, 1] units: 4 is the
    worst), recon_l1, and how well the codes match the prior: mmd (unbiased MMD^2, RBF kernel with
    the median-heuristic bandwidth) against as many prior samples (of the images' own classes for the
    mixture) and mmd_p, its permutation-test p-value (small: the codes are told apart from the prior)."""
    o = options or Options()
    ae = unwrap(G)
    was_training = ae.training
    set_mode(ae, False)
    try:
        code = run_batched(ae.encoder, x)
        rec = run_batched(ae.decoder, code)
    finally:
        set_mode(ae, was_training)
    g = torch.Generator().manual_seed(seed)
    y = labels if ae.latent.n_classes and labels is not None else None
    prior = torch.randn(code.shape, generator=g)
    if y is not None:
        prior = prior + ae.prior.means.cpu()[y]
    mmd, p = mmd_test(code.cpu(), prior.to(code.dtype), o.mmd_permutations, seed)
    return {"recon_mse": F.mse_loss(rec, x).item(), "recon_l1": F.l1_loss(rec, x).item(), "mmd": mmd, "mmd_p": p}
