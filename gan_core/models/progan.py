"""Progressive Growing of GANs (Karras et al. 2018): G and D grow from `start_resolution` to
data.resolution, each new resolution faded in while the previous one still speaks.

G: z -> PixelNorm -> 4x4 block (EqualLinear z -> 4*4*C with the official gain sqrt(2)/4, LeakyReLU(0.2),
PixelNorm, conv3x3, LeakyReLU, PixelNorm); per doubling: nearest upsample, two (conv3x3, LeakyReLU,
PixelNorm); a 1x1 toRGB (gain 1, linear output) per resolution. Every layer has an equalised learning
rate (gan_core.equalized). No batch norm anywhere.
D: mirror image: a 1x1 fromRGB + LeakyReLU per resolution, blocks of two conv3x3 + LeakyReLU then 2x2
average pooling, and a last 4x4 block: mini-batch stddev map, conv3x3, the 4x4 'valid' conv, linear -> 1.
Widths: model.g_channels / d_channels at the full resolution, doubling per halving, capped at fmap_max.

Stages. At stage (r, alpha) G runs its blocks up to r and D reads its input pooled to r; while a stage
fades in (alpha < 1) both blend the new block with the previous resolution's path:
    G: out = alpha * toRGB_r(block_r(h)) + (1 - alpha) * up2(toRGB_{r/2}(h))
    D: h = alpha * block_r(fromRGB_r(x_r)) + (1 - alpha) * fromRGB_{r/2}(pool2(x_r))
G always returns full-resolution images (the stage image upsampled nearest, as the official code feeds
its lod-based G to the rest of the system) and D always takes them, so sampling, evaluation, the monitor
and export never see a stage. Real images are brought to the same form (pooled to r, faded like G's
output, upsampled back), so at every stage D compares like with like. The stage is two plain Python
attributes (no tensors: no host sync per forward) that travel in state_dict as extra state, so
checkpoints, G_ema's deepcopy and loaded models keep it; a freshly built model is at full resolution.

Training: WGAN-GP (lambda 10) plus the drift term 1e-3 * E[D(real)^2] that keeps the critic's output
near zero (ProGAN's epsilon_drift), one D update per G update, the batch per resolution set by
`phase_batch` (the step's batches are concatenated). The schedule is gan_core.growth.Growth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import ConfigError, DataConfig, ModelConfig
from gan_core.equalized import EqualConv2d, EqualLinear, PixelNorm, StddevMap
from gan_core.growth import (Growth, Staged, check_growth, downsample, enter_stage, growth_of, levels, parse_phase_batch,
                             stage_reals, upsample)
from gan_core.latent import LatentSpec
from gan_core.losses import gradient_penalty
from gan_core.options import integer, number
from gan_core.phases import Ctx, Phase, Step, Term, unwrap
from gan_core.steps import images

if TYPE_CHECKING:
    from gan_core.config import PipelineConfig

FIELD = "family.progan."
# The family's defaults (for gan_core.models.ARCHS): the paper's WGAN-GP with Adam(1e-3, betas (0, 0.99)).
# Widths 32, not 64: at 16 px, batch 64, 2 CPU threads a full-resolution step takes 0.15 s at 32 and
# 0.53 s at 64 (425 vs 121 images/s), 8 vs 27 min for the default 3000 steps.
# Above 16 px the widths are anchored at 16 px (Options.channels_at): the paper's rule (base at the output,
# doubling per halving) gives every resolution the same FLOPs, (base * R)^2, so 32 px would make each level
# 4x dearer and add one (~5.3x a 16 px step; benchmark at 32 px, base 32: 84 images/s at the full stage, idle);
# anchored, 32 px has widths 16, 32, 64, 128 (32 -> 4 px) and a full-stage step costs ~4/3 of a 16 px one.
DEFAULTS = {"model": {"loss": "wasserstein", "g_channels": 32, "d_channels": 32},
            "train": {"lr_g": 1e-3, "lr_d": 1e-3, "beta1": 0.0, "beta2": 0.99}}


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class Options:
    """progan's settings (params `family: {progan: {...}}`)."""
    start_resolution: int = 4  # the first stage; G and D always keep their 4x4 block
    # Images shown per fade-in and per stable stage, as the paper counts training (its 600k + 600k per
    # resolution). 24k + 24k at batch 64 is 375 + 375 steps: 4 -> 16 px (stable 4, fade 8, stable 8,
    # fade 16) reaches its stable full-resolution stage at step 1500, half of the default 3000 steps, so
    # the final resolution trains as long as the growth took.
    fade_images: int = 24_000
    stable_images: int = 24_000
    # "RES:MULT,...": at resolution RES a step reads MULT x train.batch_size images (the paper's larger
    # minibatches at low resolution, where a step is cheap); unlisted resolutions use 1.
    phase_batch: str = ""
    drift: float = 1e-3  # epsilon_drift: weight of E[D(real)^2]
    gp_lambda: float = 10.0  # WGAN-GP weight (the paper's 10, target gradient norm 1)
    fmap_max: int = 512  # width cap of G and D (the paper's 512)
    # the resolution model.g/d_channels sets the width of (at data.resolution when that is smaller); widths
    # halve per doubling above it, so each level costs a 16 px level's FLOPs. 0: data.resolution (the paper's)
    channels_at: int = 16

    def __post_init__(self):
        if not _is_pow2(self.start_resolution) or self.start_resolution < 4:
            raise ConfigError(FIELD + "start_resolution", f"must be a power of two >= 4, got {self.start_resolution!r}")
        integer("progan.fade_images", self.fade_images)
        integer("progan.stable_images", self.stable_images)
        if not isinstance(self.phase_batch, str):
            raise ConfigError(FIELD + "phase_batch", f"must be a string like '4:4,8:2', got {self.phase_batch!r}")
        for r in self.batch:
            if r < self.start_resolution:
                raise ConfigError(FIELD + "phase_batch", f"resolution {r} is below start_resolution "
                                                         f"{self.start_resolution}: no stage trains there")
        number("progan.drift", self.drift)
        number("progan.gp_lambda", self.gp_lambda)
        integer("progan.fmap_max", self.fmap_max, 1)
        if not (self.channels_at == 0 or (_is_pow2(self.channels_at) and self.channels_at >= 4)):
            raise ConfigError(FIELD + "channels_at", f"must be 0 or a power of two >= 4, got {self.channels_at!r}")

    @property
    def batch(self) -> dict[int, int]:
        """resolution -> multiplier of train.batch_size (validated: powers of two >= 4, multipliers >= 1)."""
        return parse_phase_batch(self.phase_batch, FIELD + "phase_batch")


def _options(options) -> Options:
    return options if options is not None else Options()


def width(base: int, final: int, res: int, cap: int, at: int = 0) -> int:
    """`base` channels at min(final, at) (at 0: the full resolution), doubling per halving toward 4x4,
    halving per doubling above it (at least 1), capped."""
    anchor = min(final, at) if at else final
    return max(1, min(base * anchor // res, cap))


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


# ---- generator ------------------------------------------------------------------------------------
class FirstBlock(nn.Module):
    """(B, Z) normalised latent -> (B, C, 4, 4). The dense layer's gain sqrt(2)/4 is the official
    code's: it acts as a 4x4 transposed conv of a 1x1 input, whose fan-in per output is Z, not 16 Z."""

    def __init__(self, z_dim: int, ch: int):
        super().__init__()
        self.ch = ch
        self.dense = EqualLinear(z_dim, 16 * ch, gain=math.sqrt(2) / 4)
        self.conv = EqualConv2d(ch, ch, 3)
        self.norm = PixelNorm()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.norm(lrelu(self.dense(z).view(-1, self.ch, 4, 4)))
        return self.norm(lrelu(self.conv(h)))


class UpBlock(nn.Module):
    """(B, cin, r/2, r/2) -> (B, cout, r, r): nearest x2, two (conv3x3, LeakyReLU, PixelNorm)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1, self.norm = EqualConv2d(cin, cout, 3), EqualConv2d(cout, cout, 3), PixelNorm()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(lrelu(self.conv0(upsample(h, 2))))
        return self.norm(lrelu(self.conv1(h)))


class Generator(Staged):
    """z (B, z_dim) -> images (B, C, R, R), R = data.resolution at every stage: linear in train mode,
    clamped to [-1, 1] in eval mode."""

    def __init__(self, latent: LatentSpec, channels: int, start: int, final: int, base: int, cap: int, at: int = 0):
        super().__init__()
        self.latent, self.channels = latent, channels
        self.init_stage(start, final)
        w = {r: width(base, final, r, cap, at) for r in levels(4, final)}
        self.norm = PixelNorm()
        self.blocks = nn.ModuleDict({"4": FirstBlock(latent.z_dim, w[4])})
        for r in levels(8, final) if final >= 8 else []:
            self.blocks[str(r)] = UpBlock(w[r // 2], w[r])
        # toRGB only where a stage can read it: the resolutions from start up
        self.to_rgb = nn.ModuleDict({str(r): EqualConv2d(w[r], channels, 1, gain=1.0) for r in levels(start, final)})

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.stage_resolution
        h = self.norm(z)
        prev = h
        for res in levels(4, r):
            prev, h = h, self.blocks[str(res)](h)
        img = self.to_rgb[str(r)](h)  # (B, C, r, r)
        if self.fading:  # the previous resolution's image, still speaking with weight 1 - alpha
            img = self.alpha * img + (1.0 - self.alpha) * upsample(self.to_rgb[str(r // 2)](prev), 2)
        img = upsample(img, self.final // r)
        # Linear output while training (the paper's: a clamp would cut the gradient of every overshooting
        # pixel); clamped to the data range in eval mode, so FID, samples and the exported model all see
        # the images a reader gets after conversion to uint8 (the evaluation scores G's raw output).
        return img if self.training else img.clamp(-1.0, 1.0)


# ---- discriminator --------------------------------------------------------------------------------
class DownBlock(nn.Module):
    """(B, cin, r, r) -> (B, cout, r/2, r/2): conv3x3, LeakyReLU, conv3x3, LeakyReLU, 2x2 average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = EqualConv2d(cin, cin, 3), EqualConv2d(cin, cout, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return downsample(lrelu(self.conv1(lrelu(self.conv0(h)))), 2)


class LastBlock(nn.Module):
    """(B, C, 4, 4) -> (B,) logits: stddev map, conv3x3, the 4x4 'valid' conv (written as a dense layer
    on the flattened map: the same weights and sum), linear (gain 1) -> 1 logit."""

    def __init__(self, ch: int):
        super().__init__()
        self.stddev = StddevMap(group=4)
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.conv4 = EqualLinear(16 * ch, ch)
        self.out = EqualLinear(ch, 1, gain=1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = lrelu(self.conv(self.stddev(h)))
        return self.out(lrelu(self.conv4(h.flatten(1)))).squeeze(1)


class FromRGB(nn.Module):
    def __init__(self, channels: int, cout: int):
        super().__init__()
        self.conv = EqualConv2d(channels, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrelu(self.conv(x))


class Discriminator(Staged):
    """images (B, C, R, R), R = data.resolution, in [-1, 1] -> critic values (B,)."""

    def __init__(self, channels: int, start: int, final: int, base: int, cap: int, at: int = 0):
        super().__init__()
        self.init_stage(start, final)
        w = {r: width(base, final, r, cap, at) for r in levels(4, final)}
        self.from_rgb = nn.ModuleDict({str(r): FromRGB(channels, w[r]) for r in levels(start, final)})
        self.blocks = nn.ModuleDict({str(r): DownBlock(w[r], w[r // 2]) for r in levels(8, final)} if final >= 8 else {})
        self.last = LastBlock(w[4])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # y: unconditional, unused
        r, k = self.stage_resolution, self.final // self.stage_resolution
        h = self.from_rgb[str(r)](downsample(x, k))
        if r > 4:
            h = self.blocks[str(r)](h)
        if self.fading:  # pooled straight from x (not from x_r), so alpha = 0 is exactly stage r/2
            h = self.alpha * h + (1.0 - self.alpha) * self.from_rgb[str(r // 2)](downsample(x, 2 * k))
        for res in reversed(levels(8, r // 2) if r >= 16 else []):
            h = self.blocks[str(res)](h)
        return self.last(h)


def _fits(o: Options, d: DataConfig) -> None:
    if o.start_resolution > d.resolution:  # check() says so for a whole config; builders are also called alone
        raise ConfigError(FIELD + "start_resolution", f"{o.start_resolution} must be <= data.resolution {d.resolution}")


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> Generator:
    o = _options(options)
    _fits(o, d)
    return Generator(LatentSpec(m.z_dim), d.channels, o.start_resolution, d.resolution, m.g_channels, o.fmap_max,
                     o.channels_at)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> Discriminator:
    o = _options(options)
    _fits(o, d)
    return Discriminator(d.channels, o.start_resolution, d.resolution, m.d_channels, o.fmap_max, o.channels_at)


# ---- schedule and config checks ---------------------------------------------------------------------


def schedule(cfg: "PipelineConfig") -> Growth:
    """Family.schedule: how many batches each step reads and at which stage it trains."""
    return growth_of(_options(cfg.family), cfg.data.resolution, cfg.train.batch_size)


def check(cfg: "PipelineConfig") -> None:
    """Growth must end inside the run (the full resolution trains stable for at least one step), the
    batch multipliers must name resolutions the run trains at, and model.minibatch, which progan would
    silently ignore, is refused: its D always ends with the stddev map."""
    check_growth(_options(cfg.family), cfg, FIELD[:-1])
    if cfg.model.minibatch != "none":
        raise ConfigError("model.minibatch", f"progan's D always ends with the mini-batch stddev map: leave it "
                                             f"'none', got {cfg.model.minibatch!r}")


# ---- the train step: one WGAN-GP critic update + drift, then one G update, at the scheduled stage --------


def prepare(ctx: Ctx) -> None:
    """The step's stage on G, D and G_ema, its batches merged into one (gan_core.growth.enter_stage)."""
    ctx.v["stage"] = enter_stage(ctx, growth_of(_options(ctx.state.options), ctx.g_plain.final, ctx.cfg.batch_size))


def _d_loss(ctx: Ctx) -> torch.Tensor:
    """loss.d(D(real), D(G(z))); G's and D's forwards go through the DDP wrappers. The fake keeps its
    graph: G's phase reuses it (G has not changed since)."""
    state, stage = ctx.state, ctx.v["stage"]
    real = stage_reals(images(ctx), stage.resolution, stage.alpha)
    z = unwrap(state.G).latent.sample(real.shape[0], device=state.device).z
    fake = state.G(z)
    logit_real, logit_fake = state.D(real), state.D(fake.detach())
    ctx.v.update(real=real, fake=fake, logit_real=logit_real, logit_fake=logit_fake)
    return state.loss.d(logit_real, logit_fake)


def _gp_term(ctx: Ctx) -> torch.Tensor:
    """WGAN-GP on full-resolution interpolates, as the official code (its D also reads full-res images)."""
    v = ctx.v
    eps = torch.rand(v["real"].shape[0], 1, 1, 1, device=ctx.state.device)
    return gradient_penalty(ctx.d_plain, v["real"], v["fake"].detach(), eps)


def _drift_term(ctx: Ctx) -> torch.Tensor:
    """E[D(real)^2]: the Wasserstein loss is blind to a constant shift of D's output; this keeps it near 0."""
    return ctx.v["logit_real"].float().pow(2).mean()


def _wasserstein(ctx: Ctx) -> dict:
    return {"wasserstein": (ctx.v["logit_real"].mean() - ctx.v["logit_fake"].mean()).detach()}


def _g_loss(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["fake"]))


step = Step((
    Phase("D", _d_loss, report=_wasserstein, terms=(
        Term("gp", _gp_term, lambda ctx: _options(ctx.state.options).gp_lambda),
        Term("drift", _drift_term, lambda ctx: _options(ctx.state.options).drift))),
    Phase("G", _g_loss),
), prepare=prepare)
