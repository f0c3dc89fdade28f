"""StyleGAN (Karras et al. 2019, "v1") and StyleGAN2 (Karras et al. 2020, "v2"), scaled to small images.

G = mapping + synthesis. Mapping: PixelNorm(z), then `mapping_layers` EqualLinear(lr_mul 0.01) +
LeakyReLU(0.2) -> w (B, w_dim). Synthesis starts from a learned 4x4 constant and has two layers per
resolution 4, 8, ..., R; every layer reads its own style vector ws[:, k], so G.num_ws = 2 * (number
of resolutions) for both versions (18 at 1024 px, as the papers):
  v1: conv3x3 (nearest 2x upsampling first in a block's first layer), per-pixel noise, bias, lrelu,
      AdaIN (instance norm, then a per-channel scale 1 + s and shift b from w). The 4x4 block's first
      layer is the constant itself (noise + AdaIN, no conv; the constant starts N(0, 1), not ones: see
      Synthesis). One linear toRGB at R; with `growth`, one
      per resolution and ProGAN's fade (gan_core.growth drives the stage).
  v2: modulated 3x3 conv (weights scaled per input channel by the style, then demodulated to unit
      output norm, which replaces AdaIN's instance norm and its droplet artefacts), noise, bias,
      lrelu * sqrt(2); one conv at 4x4, two per higher resolution; skip architecture: a modulated 1x1
      toRGB per resolution whose images are summed after bilinear 2x upsampling. toRGB at a
      resolution reads the style of the next block's first layer (index 2i + 1), as the official code.
Noise: per layer a (1, 1, r, r) noise map times a learned per-channel strength (init 0, so noise
starts without effect and G learns how much stochastic detail each layer gets). "random" draws
fresh noise per forward (training), "const" uses a buffer fixed at construction (saved with the
weights): evaluation, sampling and export are deterministic for a given z.
Output is linear (no tanh), as the official code; the pipeline clamps when it writes images.

D: fromRGB 1x1, blocks conv3x3-conv3x3-avgpool down to 4x4 (v2: residual, skip 1x1 conv, sum / sqrt
2), then StddevMap, conv3x3, dense 16C -> C, dense C -> 1. v1 with growth gets a fromRGB per
resolution and the fade of gan_core.models' growing contract.

The layers (mapping, noise, AdaIN, modulated convolution, truncation, mixing) are gan_core/style.py.

Left out for small images: the blur (FIR) filters around resampling, conv clamping, the lazy
regularisation's lr/beta correction (mb_ratio): the Terms add weight * every * loss instead, which
is the same expected gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import ConfigError, DataConfig, ModelConfig
from gan_core.options import integer, number
from gan_core.equalized import EqualConv2d, EqualLinear, StddevMap
from gan_core.growth import (Fixed, Growth, Staged, check_growth, enter_stage, growth_of, levels, merge_batches,
                             parse_phase_batch, stage_reals)
from gan_core.latent import LatentSpec
from gan_core.style import (SQRT2, LayerV1, LayerV2, Mapping, Sampler, ToRGBV2, mix, path_length_penalty,
                             truncate, up2)
from gan_core.losses import r1_penalty
from gan_core.phases import Ctx, Phase, Step, Term, unwrap
from gan_core.steps import images

if TYPE_CHECKING:
    from gan_core.config import PipelineConfig

# The family's defaults (for gan_core.models.ARCHS): StyleGAN2(-ADA)'s non-saturating loss and
# Adam(2.5e-3, betas (0, 0.99)); widths 32 for CPU runs at 16 px, as progan's (above 16 px see
# Options.channels_at).
DEFAULTS = {"model": {"loss": "nonsat", "g_channels": 32, "d_channels": 32},
            "train": {"lr_g": 2.5e-3, "lr_d": 2.5e-3, "beta1": 0.0, "beta2": 0.99}}
VERSIONS = ("v1", "v2")
NOISE_MODES = ("random", "const")
MAX_WIDTH = 512
# model.g_channels / d_channels is the width at this resolution (at data.resolution when that is smaller):
# the papers' rule (base width at the output, doubling per halving) makes every resolution cost the same
# FLOPs, r^2 * (base * R / r)^2 = (base * R)^2, so going from 16 to 32 px makes each of them 4x dearer and
# adds one: ~5.3x a 16 px step (benchmark at 32 px: 112 images/s for v2 at base 32, idle; the default
# 3000-step run took 43 min under load, ~35 min alone, fid_2k 2.23). Anchoring the base at 16 px halves
# the widths at 32 px (16, 32, 64, 128 from 32 to 4 px), so every level costs what a 16 px level costs and
# a 32 px step ~4/3 of a 16 px one (see README for the measured run). 0: the papers' rule.
CHANNELS_AT = 16


@dataclass(frozen=True)
class Options:
    """stylegan's settings (params `family: {stylegan: {...}}`)."""
    version: str = "v2"  # v1: AdaIN (StyleGAN); v2: weight (de)modulation, skip G, residual D (StyleGAN2)
    w_dim: int = 0  # 0: model.z_dim
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01  # the mapping learns 100x slower: w must stay a stable input for synthesis
    mixing_prob: float = 0.9  # share of training samples whose styles switch to a second z at a random layer
    # R1 weight. StyleGAN2-ADA's heuristic 0.0002 * R^2 / batch gives 0.0008 at 16 px, batch 64, and its
    # CIFAR-10 config 0.01; on these small datasets D overpowers G with such weights (blobs, 600 steps,
    # FID after/before over seeds 0-2: 0.32-1.09 at 0.01, 0.21-0.74 at 1, 0.07-0.37 at 10 (0.05-0.57
    # over seeds 0-5), 0.20-0.40 at 30): a strong R1 keeps D's surface flat enough for G to follow.
    r1_gamma: float = 10.0
    r1_every: int = 16  # lazy regularisation: R1 every 16 D steps, weighted x16 (StyleGAN2 sec. 3.1)
    pl_weight: float = 0.0  # path-length regularisation of G (StyleGAN2: 2); off by default
    pl_every: int = 4
    pl_decay: float = 0.01  # the running mean of path lengths moves 1% per evaluation
    w_avg_beta: float = 0.995  # G.w_avg <- lerp(batch mean of w, w_avg, beta): the truncation centre
    growth: bool = False  # v1 only: progressive growing with progan's schedule (gan_core.growth)
    start_resolution: int = 4
    # 24k images per fade and per stable stage: 4 -> 16 px (stable 4, fade 8, stable 8, fade 16) takes
    # 96k images = 1500 steps at batch 64, half of the default 3000, as progan's defaults
    fade_images: int = 24_000
    stable_images: int = 24_000
    phase_batch: str = ""  # "4:4,8:2": resolution:multiplier of train.batch_size while at that stage
    channels_at: int = CHANNELS_AT  # the resolution model.g/d_channels sets the width of; 0: data.resolution

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ConfigError("family.version", f"must be one of {VERSIONS}, got {self.version!r}")
        integer("w_dim", self.w_dim, 0)
        integer("mapping_layers", self.mapping_layers, 1)
        for name in ("r1_every", "pl_every", "fade_images", "stable_images"):
            integer(name, getattr(self, name), 1)
        integer("start_resolution", self.start_resolution, 4)
        integer("channels_at", self.channels_at, 0)
        if self.channels_at and (self.channels_at < 4 or self.channels_at & (self.channels_at - 1)):
            raise ConfigError("family.channels_at", f"must be 0 or a power of two >= 4, got {self.channels_at}")
        if self.start_resolution & (self.start_resolution - 1):
            raise ConfigError("family.start_resolution", f"must be a power of two, got {self.start_resolution}")
        number("mapping_lr_mul", self.mapping_lr_mul, 0, None, low_open=True)
        number("mixing_prob", self.mixing_prob, 0, 1)
        number("r1_gamma", self.r1_gamma, 0, None)
        number("pl_weight", self.pl_weight, 0, None)
        number("pl_decay", self.pl_decay, 0, 1, low_open=True)
        number("w_avg_beta", self.w_avg_beta, 0, 1)
        if not isinstance(self.growth, bool):
            raise ConfigError("family.growth", f"must be true or false, got {self.growth!r}")
        if self.growth and self.version != "v1":
            raise ConfigError("family.growth", "progressive growing is StyleGAN v1's; v2 trains at full "
                                               "resolution (set version: v1 or growth: false)")
        if not isinstance(self.phase_batch, str):
            raise ConfigError("family.phase_batch", f"must be a string like '4:4,8:2', got {self.phase_batch!r}")
        for r in self.batch:
            if r < self.start_resolution:
                raise ConfigError("family.phase_batch", f"resolution {r} is below start_resolution "
                                                        f"{self.start_resolution}: no stage trains there")

    @property
    def batch(self) -> dict[int, int]:
        """resolution -> multiplier of train.batch_size (powers of two >= 4, multipliers >= 1)."""
        return parse_phase_batch(self.phase_batch, "family.phase_batch")



def _options(options) -> Options:
    return options if options is not None else Options()


def width(base: int, resolution: int, final: int, at: int = CHANNELS_AT) -> int:
    """`base` channels at min(final, at) (at 0: final), doubling per halving, halving per doubling above
    it (at least 1), capped at MAX_WIDTH."""
    anchor = min(final, at) if at else final
    return max(1, min(base * anchor // resolution, MAX_WIDTH))


# ---- generator ---------------------------------------------------------------------------------------
class Synthesis(Staged):
    """ws (B, num_ws, w_dim) -> images (B, C, R, R); at a growth stage below R, the stage's image
    upsampled (nearest) to R."""

    def __init__(self, version: str, w_dim: int, channels: int, final: int, base: int, growth: bool = False,
                 at: int = CHANNELS_AT):
        super().__init__()
        self.init_stage(4, final)
        self.version, self.growth = version, growth
        self.res = levels(4, final)
        ch = [width(base, r, final, at) for r in self.res]
        self.num_ws = 2 * len(self.res)
        v1 = version == "v1"
        # N(0, 1) for both versions (StyleGAN2's). StyleGAN's ones make the first layer's instance norm
        # divide a zero-variance map, so the first nonzero noise strength becomes that layer's whole
        # signal (measured at init, strength 0.02: image change by noise / by z 0.71-0.92 with ones,
        # 0.03-0.06 with N(0, 1)).
        self.const = nn.Parameter(torch.randn(1, ch[0], 4, 4))
        blocks = []
        for i, r in enumerate(self.res):
            if v1:
                first = (LayerV1(ch[0], ch[0], w_dim, r, conv=False) if i == 0
                         else LayerV1(ch[i - 1], ch[i], w_dim, r, up=True))
                blocks.append(nn.ModuleList([first, LayerV1(ch[i], ch[i], w_dim, r)]))
            else:
                layers = [LayerV2(ch[i - 1], ch[i], w_dim, r, up=True)] if i > 0 else []
                blocks.append(nn.ModuleList(layers + [LayerV2(ch[i], ch[i], w_dim, r)]))
        self.blocks = nn.ModuleList(blocks)
        if v1:  # linear 1x1, gain 1; one per resolution only when growing (unused modules upset DDP)
            rgb_at = self.res if growth else self.res[-1:]
            self.to_rgb = nn.ModuleDict({str(r): EqualConv2d(ch[self.res.index(r)], channels, 1, gain=1.0)
                                         for r in rgb_at})
        else:
            self.to_rgb = nn.ModuleDict({str(r): ToRGBV2(c, channels, w_dim) for r, c in zip(self.res, ch)})

    def style_resolutions(self) -> list[int]:
        """The resolution each style index drives: v1 two layers per resolution; v2 one layer at 4 px,
        then (toRGB of the previous resolution + first layer, second layer) per resolution, so index
        2i + 1 is shared by the toRGB at res[i] and the first layer at res[i + 1], counted at the latter."""
        if self.version == "v1":
            return [r for r in self.res for _ in range(2)]
        return [self.res[0]] + [self.res[min((k + 1) // 2, len(self.res) - 1)] for k in range(1, self.num_ws)]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        last = self.res.index(self.stage_resolution)
        k, rgb, prev = 0, None, None
        for i in range(last + 1):
            prev = x
            for layer in self.blocks[i]:
                x, k = layer(x, ws[:, k], noise_mode), k + 1
            if self.version == "v2":  # skip G: every resolution adds its detail to the upsampled image
                r = self.to_rgb[str(self.res[i])](x, ws[:, 2 * i + 1])
                rgb = r if rgb is None else r + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        if self.version == "v1":
            rgb = self.to_rgb[str(self.res[last])](x)
            if self.alpha < 1.0 and last > 0:  # fade: the previous stage's image, upsampled, fades out
                rgb = self.alpha * rgb + (1 - self.alpha) * up2(self.to_rgb[str(self.res[last - 1])](prev))
        scale = self.final // self.res[last]
        return rgb if scale == 1 else F.interpolate(rgb, scale_factor=scale, mode="nearest")


class Generator(Staged):
    """G(z) -> (B, C, R, R) images, roughly in [-1, 1]. Training mode: fresh noise, style mixing
    with probability mixing_prob, w_avg tracked. Eval mode: const noise, no mixing: deterministic."""

    def __init__(self, latent: LatentSpec, channels: int, resolution: int, base: int, o: Options):
        super().__init__()
        self.init_stage(4, resolution)
        self.latent, self.resolution = latent, resolution
        w_dim = o.w_dim or latent.z_dim
        self.mapping = Mapping(latent.z_dim, w_dim, o.mapping_layers, o.mapping_lr_mul)
        self.synthesis = Synthesis(o.version, w_dim, channels, resolution, base, o.growth, o.channels_at)
        self.num_ws, self.w_dim = self.synthesis.num_ws, w_dim
        self.mixing_prob, self.w_avg_beta = o.mixing_prob, o.w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))  # the truncation centre
        self.register_buffer("pl_mean", torch.zeros(()))  # running mean of path lengths (v2's PL term)

    def set_stage(self, resolution: int, alpha: float) -> None:
        super().set_stage(resolution, alpha)
        self.synthesis.set_stage(resolution, alpha)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        return w[:, None].expand(-1, self.num_ws, -1)  # (B, num_ws, w_dim)

    def styles(self, z: torch.Tensor, psi: float = 1.0, track: bool = False) -> torch.Tensor:
        """z (B, z_dim) -> ws (B, num_ws, w_dim): mapped, tracked into w_avg (`track`, training),
        truncated, and in training mixed with a second z from the global RNG."""
        w = self.mapping(z)
        if track and self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(0).float().lerp(self.w_avg, self.w_avg_beta))
        ws = self.broadcast(truncate(w, self.w_avg, psi) if psi != 1.0 else w)
        if self.training and self.mixing_prob > 0:
            b = z.shape[0]
            cut = torch.randint(1, self.num_ws, (b,), device=z.device)  # at least one layer from each z
            cut = torch.where(torch.rand(b, device=z.device) < self.mixing_prob, cut, torch.full_like(cut, self.num_ws))
            ws = mix(ws, self.broadcast(self.mapping(torch.randn_like(z))), cut)
        return ws

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        mode = "random" if self.training else "const"
        return self.synthesis(self.styles(z, psi, track=True), mode)


def sampler(G: nn.Module) -> Sampler:
    """Family.infer: the sampler around G (or G_ema)."""
    return Sampler(unwrap(G))


# ---- discriminator -------------------------------------------------------------------------------------
class DBlock(nn.Module):
    """conv3x3 -> lrelu -> conv3x3 -> lrelu -> avgpool 2; residual (v2): + avgpool(1x1 conv(x)), the
    sum / sqrt(2) so the variance does not double per block."""

    def __init__(self, cin: int, cout: int, residual: bool):
        super().__init__()
        self.conv1, self.conv2 = EqualConv2d(cin, cin, 3), EqualConv2d(cin, cout, 3)
        self.skip = EqualConv2d(cin, cout, 1, bias=False, gain=1.0) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2), 2)
        if self.skip is not None:
            h = (h + F.avg_pool2d(self.skip(x), 2)) / SQRT2
        return h


class Discriminator(Staged):
    """(B, C, R, R) -> logits (B,). At a growth stage r < R the input is average-pooled to r; during a
    fade h = alpha * block_r(fromRGB_r(x_r)) + (1 - alpha) * fromRGB_{r/2}(avgpool(x_r))."""

    def __init__(self, channels: int, final: int, base: int, residual: bool, growth: bool = False,
                 at: int = CHANNELS_AT):
        super().__init__()
        self.init_stage(4, final)
        self.res = levels(4, final)
        ch = {r: width(base, r, final, at) for r in self.res}
        rgb_at = self.res if growth else [final]
        self.from_rgb = nn.ModuleDict({str(r): EqualConv2d(channels, ch[r], 1) for r in rgb_at})
        self.blocks = nn.ModuleDict({str(r): DBlock(ch[r], ch[r // 2], residual) for r in self.res[1:]})
        c4 = ch[4]
        self.stddev, self.conv = StddevMap(4), EqualConv2d(c4 + 1, c4, 3)
        self.fc, self.out = EqualLinear(16 * c4, c4), EqualLinear(c4, 1, gain=1.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # y: unconditional, unused
        r = self.stage_resolution
        if r < self.final:
            x = F.avg_pool2d(x, self.final // r)
        h = F.leaky_relu(self.from_rgb[str(r)](x), 0.2)
        if r > 4:
            h = self.blocks[str(r)](h)
            if self.alpha < 1.0:  # fade: the previous stage's input path fades out
                low = F.leaky_relu(self.from_rgb[str(r // 2)](F.avg_pool2d(x, 2)), 0.2)
                h = self.alpha * h + (1 - self.alpha) * low
            for res in reversed(self.res[1:self.res.index(r)]):
                h = self.blocks[str(res)](h)
        h = F.leaky_relu(self.conv(self.stddev(h)), 0.2)
        h = F.leaky_relu(self.fc(h.flatten(1)), 0.2)
        return self.out(h).squeeze(1)


# ---- builders -------------------------------------------------------------------------------------------
def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> Generator:
    return Generator(LatentSpec(m.z_dim), d.channels, d.resolution, m.g_channels, _options(options))


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> Discriminator:
    o = _options(options)
    return Discriminator(d.channels, d.resolution, m.d_channels, residual=o.version == "v2", growth=o.growth,
                         at=o.channels_at)


# ---- schedule and config checks (R1: gan_core.losses.r1_penalty; path length: gan_core.style) ------------


def schedule(cfg: "PipelineConfig") -> Fixed | Growth:
    """Family.schedule: one batch per step, or the growth schedule's multiplier of batches."""
    o = _options(cfg.family)
    return growth_of(o, cfg.data.resolution, cfg.train.batch_size) if o.growth else Fixed(1)


def grows(options) -> bool:
    """Family.dynamic_graph: only a growing G and D leave layers without gradients."""
    return _options(options).growth


def check(cfg: "PipelineConfig") -> None:
    """Growth must fit the data and end inside the run; settings stylegan would silently ignore are
    refused (its regulariser is R1, its D always has the stddev map)."""
    o = _options(cfg.family)
    if o.growth:
        check_growth(o, cfg, "family.stylegan")
    if cfg.model.minibatch != "none":
        raise ConfigError("model.minibatch", f"stylegan's D always ends with the mini-batch stddev map: leave it "
                                             f"'none', got {cfg.model.minibatch!r}")


# ---- the train step: D (non-saturating + lazy R1), then G (non-saturating + lazy path length) -------------
def prepare(ctx: Ctx) -> None:
    """With growth, set the step's stage on G, D and G_ema and bring the reals to that stage; merge
    the step's batches (growth's multiplier) into one real batch ctx.v["real"] (B, C, R, R)."""
    o = _options(ctx.state.options)
    stage = enter_stage(ctx, growth_of(o, ctx.g_plain.resolution, ctx.cfg.batch_size)) if o.growth else None
    merge_batches(ctx)
    real = images(ctx)
    ctx.v["real"] = real if stage is None else stage_reals(real, stage.resolution, stage.alpha)


def _d_loss(ctx: Ctx) -> torch.Tensor:
    """loss.d(D(real), D(G(z))) through the DDP wrappers; the fake keeps its graph for G's phase."""
    state, real = ctx.state, ctx.v["real"]
    z = unwrap(state.G).latent.sample(real.shape[0], device=state.device).z
    fake = state.G(z)
    ctx.v["fake"] = fake
    return state.loss.d(state.D(real), state.D(fake.detach()))


def _g_loss(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["fake"]))


def _pl_term(ctx: Ctx) -> torch.Tensor:
    """Path length on half the batch (StyleGAN2's pl_batch_shrink 2: the double backward is costly)."""
    G = ctx.g_plain
    z = G.latent.sample(max(1, ctx.v["real"].shape[0] // 2), device=ctx.state.device).z
    return path_length_penalty(G, z, _options(ctx.state.options).pl_decay)


@lru_cache(maxsize=8)
def _step_for(o: Options) -> Step:
    """The Step for these options: the lazy intervals are the Terms' own, fixed per Step."""
    r1 = Term("r1", lambda ctx: r1_penalty(ctx.d_plain, ctx.v["real"]), lambda ctx: o.r1_gamma / 2, every=o.r1_every)
    pl = Term("pl", _pl_term, lambda ctx: o.pl_weight, every=o.pl_every)
    return Step((Phase("D", _d_loss, terms=(r1,)), Phase("G", _g_loss, terms=(pl,))), prepare=prepare)


def step(state, batches: list, cfg) -> dict[str, torch.Tensor]:
    """Family.step: one D update (non-saturating, R1 every r1_every steps), one G update
    (non-saturating, path length every pl_every steps when pl_weight > 0), at the growth stage."""
    return _step_for(_options(state.options))(state, batches, cfg)
