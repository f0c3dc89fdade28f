"""SRGAN (Ledig et al. 2017): single-image super-resolution, x2 or x4.

G: SRResNet. conv9x9 + PReLU, B residual blocks (conv3-BN-PReLU-conv3-BN + skip), conv3-BN plus a
long skip from before the blocks, log2(scale) sub-pixel blocks (conv3 to 4x the width ->
PixelShuffle(2) -> PReLU), conv9x9, tanh. Fully convolutional: any LR size in, scale x that size out.
Width `model.g_channels` (the paper's 64).

D: the paper's strided VGG-style discriminator, k3n64s1, k3n64s2, k3n128s1, k3n128s2, ... (BN from
the second conv, LeakyReLU 0.2), with as many stride-2 pairs as keep the last map >= 4x4 (the paper's
4 at 96 px; 2 at 16 px), widths from `model.d_channels`, capped at 8x. The paper flattens into a
1024-unit dense layer; global average pooling comes first here so any HR size gives one logit.

Training, as the paper: first an MSE-only SRResNet (`warmup_steps`), then the GAN phase, with the
content loss (pixel MSE + `feature_weight` * MSE of frozen features, gan_core.metrics.features) and
`adv_weight` * the adversarial loss. LR images are made from the HR batch with
gan_core.resample.downsample, the same antialiased bicubic the held-out inputs get.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import ConfigError, DataConfig, ModelConfig
from gan_core.options import choice, integer, number
from gan_core.inference import run_batched
from gan_core.metrics import features as feats
from gan_core.resample import downsample, upsample
from gan_core.phases import Ctx, Phase, Step, Term
from gan_core.steps import images

if TYPE_CHECKING:
    from gan_core.sections import TrainConfig
    from gan_core.state import TrainState

SCALES = (2, 4)
MIN_LR = 4  # px: the smallest LR side a 9x9 head and 3x3 blocks still see as an image
MAX_MULT = 8  # D's widths stop doubling at 8x the base (the paper's 512 = 8 * 64)
MAX_HALVINGS = 4  # the paper's D halves 96 px four times, to 6x6
PHASES = ("mse", "gan")


@dataclass(frozen=True)
class Options:
    """srgan's settings (params `family: {srgan: {...}}`)."""
    scale: int = 4  # upscaling factor, 2 or 4; data.resolution is the HR size, LR = resolution / scale
    # Residual blocks in G. The paper has 16; 8 halves G's cost for CPU runs at a small loss of depth.
    blocks: int = 8
    # MSE-only (SRResNet) steps before the GAN phase. The paper trains SRResNet 1e6 steps, then SRGAN
    # 2e5; -1 (the default) takes two thirds of train.steps (2000 of the default 3000). A set value
    # must be < train.steps (`check`), or the run would never leave the MSE phase.
    warmup_steps: int = -1
    adv_weight: float = 1e-3  # the paper's 10^-3 on the adversarial term
    # Weight of the feature MSE next to the pixel MSE (weight 1) in the content loss. VGG's features are
    # divided by 12.75 as in the paper, which puts that term on a pixel MSE's scale, so 1.0 is the
    # paper's VGG54 loss at its weight; the pixel MSE kept beside it anchors colours and PSNR. The
    # fallback's feature MSE is on that scale too (0.6-1.1x the pixel MSE of bicubic x2/x4 outputs).
    feature_weight: float = 1.0
    # auto (vgg19 if its weights file is present, else random-conv-s0) | vgg19 | random-conv-s0
    features: str = feats.AUTO
    # G's learning rate in the GAN phase (train.lr_g is the MSE phase's). The paper's 1e-4: G starts
    # the GAN phase as a trained SRResNet that D's young gradients must only nudge. Measured (16 px,
    # x2, grey): at the MSE phase's 2e-3 the first GAN steps threw PSNR from 27 to 8 dB; at 2e-4 it held.
    gan_lr_g: float = 1e-4
    # Each HR patch in one of the 8 orientations of the square (flips and quarter turns), drawn per
    # image per step, as EDSR and later SR work train. The built-in photo-patches hold 562 training
    # patches: without it the default run's held-out PSNR peaked at step 1000 and ended below bicubic.
    augment: bool = True

    def __post_init__(self):
        if not isinstance(self.augment, bool):
            raise ConfigError("family.augment", f"must be true or false, got {self.augment!r}")
        choice("scale", self.scale, SCALES)
        integer("blocks", self.blocks, 1)
        integer("warmup_steps", self.warmup_steps, -1, note=" (-1: two thirds of train.steps)")
        for name in ("adv_weight", "feature_weight"):
            number(name, getattr(self, name))
        number("gan_lr_g", self.gan_lr_g, low_open=True)  # 0: G would not train in the GAN phase
        choice("features", self.features, feats.NAMES)


def _options(options) -> Options:
    return options if options is not None else Options()


# ---- generator ------------------------------------------------------------------------------------
class Residual(nn.Module):
    """x + (conv3-BN-PReLU-conv3-BN)(x): the blocks learn a correction, so depth does not hurt."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.PReLU(width), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def subpixel(width: int) -> nn.Sequential:
    """x2: conv3 to 4x the channels, PixelShuffle(2) rearranges them into a 2x larger map (Shi et al.
    2016), PReLU. Learned upsampling without transposed-conv checkerboards."""
    return nn.Sequential(nn.Conv2d(width, 4 * width, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(width))


class SRResNet(nn.Module):
    """(B, C, h, w) in [-1, 1] -> (B, C, scale h, scale w) in [-1, 1], any h, w."""

    def __init__(self, channels: int, width: int, blocks: int, scale: int):
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, 1, 4), nn.PReLU(width))
        self.blocks = nn.Sequential(*[Residual(width) for _ in range(blocks)])
        self.trunk = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.up = nn.Sequential(*[subpixel(width) for _ in range(int(math.log2(scale)))])
        self.tail = nn.Sequential(nn.Conv2d(width, channels, 9, 1, 4), nn.Tanh())
        # PyTorch's default (Kaiming-uniform) init: BN after every trunk conv keeps activations at
        # unit scale, and DCGAN's N(0, 0.02) would make the 9x9 and sub-pixel convs start near zero.

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)
        h = h + self.trunk(self.blocks(h))  # long skip: the trunk refines the head's features
        return self.tail(self.up(h))


# ---- discriminator --------------------------------------------------------------------------------
def halvings(resolution: int) -> int:
    """Stride-2 convs of D at this HR size: the paper's 4, fewer where the map would go below 4x4."""
    return max(1, min(MAX_HALVINGS, int(math.log2(resolution)) - 2))


class Discriminator(nn.Module):
    """(B, C, H, W) in [-1, 1] -> logits (B,). Pairs of (k3 s1, k3 s2) convs per width, the width
    doubling per pair; global average pool; dense 16x base (the paper's 1024 at 64) -> LReLU -> dense 1."""

    def __init__(self, channels: int, resolution: int, base: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, base, 3, 1, 1), nn.LeakyReLU(0.2)]  # no BN on the input
        cin = base
        for i in range(halvings(resolution)):
            cout = base * min(2 ** i, MAX_MULT)
            if i > 0:  # k3 n(cout) s1; the first pair's s1 conv is the input conv above
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(cout, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, 16 * base), nn.LeakyReLU(0.2), nn.Linear(16 * base, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3))).squeeze(1)


# ---- builders -------------------------------------------------------------------------------------
def check_resolution(d: DataConfig, scale: int) -> None:
    if d.resolution % scale or d.resolution // scale < MIN_LR:
        raise ConfigError("data.resolution", f"srgan x{scale} needs an HR size divisible by {scale} whose LR size "
                                             f"(resolution / {scale}) is >= {MIN_LR} px, got {d.resolution}")


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> SRResNet:
    o = _options(options)
    check_resolution(d, o.scale)
    if o.features == feats.VGG19 and not feats.vgg19_path().is_file():  # fail now, not at the first GAN step
        raise ConfigError("family.features", f"vgg19 needs its weights file, and {feats.vgg19_path()} does not "
                                             f"exist (set ${feats.VGG19_ENV}, or use auto / {feats.FALLBACK})")
    return SRResNet(d.channels, m.g_channels, o.blocks, o.scale)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> Discriminator:
    check_resolution(d, _options(options).scale)
    return Discriminator(d.channels, d.resolution, m.d_channels)


# ---- train step -----------------------------------------------------------------------------------
def warmup(o: Options, t: "TrainConfig") -> int:
    """The MSE-only steps: as set, or two thirds of the run."""
    return o.warmup_steps if o.warmup_steps >= 0 else (2 * t.steps) // 3


def phase(state: "TrainState", t: "TrainConfig") -> str:
    """mse while state.step < the warm-up (the step about to run), gan from then on."""
    return "mse" if state.step < warmup(_options(state.options), t) else "gan"


def content_features(state: "TrainState") -> nn.Module:
    """The frozen content-loss backbone, cached per process (never part of G or the checkpoint). The
    first GAN step records its name and hash in state.extra; a resumed run that would resolve another
    backbone ("auto" on a machine with or without the VGG19 file) stops instead of silently changing
    its loss."""
    module, name, sha = feats.cached_features(_options(state.options).features, state.device)
    recorded = state.extra.get("features")
    if recorded is not None and (recorded, state.extra.get("features_sha256")) != (name, sha):
        raise RuntimeError(f"srgan: this run's content loss used features {recorded!r} "
                           f"(sha256 {state.extra.get('features_sha256')}), this machine resolves {name!r} "
                           f"(sha256 {sha}): set family.srgan.features and the weights file "
                           f"(${feats.VGG19_ENV}) so both agree")
    state.extra["features"], state.extra["features_sha256"] = name, sha
    return module


def start_gan_phase(state: "TrainState", o: Options) -> None:
    """As the paper starts SRGAN from a trained SRResNet: a fresh Adam for G at gan_lr_g. Adam's
    second moments, tuned to the small MSE gradients, would otherwise turn the first feature and
    adversarial gradients into steps many times lr (measured: PSNR 27 -> 8 dB in 25 steps). Both
    the cleared state and the new lr are in opt_g's state dict, so a resume keeps them."""
    state.opt_g.state.clear()
    for group in state.opt_g.param_groups:
        group["lr"] = o.gan_lr_g


def _prepare(ctx: Ctx) -> None:
    """HR batch (uint8 -> [-1, 1]) and its downsampled LR; the phase of this step; the first GAN step
    resets G's optimizer (start_gan_phase)."""
    state, o = ctx.state, _options(ctx.state.options)
    hr = images(ctx)  # (B, C, R, R)
    if o.augment:
        hr = dihedral(hr)
    ctx.v.update(hr=hr, lr=downsample(hr, o.scale))  # LR (B, C, R/scale, R/scale)
    state.extra["phase"] = phase(state, ctx.cfg)
    if state.extra["phase"] == "mse":
        ctx.out["loss_d"] = torch.zeros((), device=state.device)  # D is untouched while G warms up
    elif state.step == warmup(o, ctx.cfg):
        start_gan_phase(state, o)


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """Each square image of x turned to one of its 8 orientations at random (the torch RNG, which
    checkpoints carry, so a resume draws the same ones). Selected with where, on x's device: no
    host sync and no per-image Python loop."""
    k = torch.randint(0, 8, (x.shape[0], 1, 1, 1), device=x.device)
    x = torch.where(k % 2 == 1, x.flip(-1), x)
    x = torch.where(k // 2 % 2 == 1, x.flip(-2), x)
    return torch.where(k // 4 == 1, x.transpose(-1, -2), x)


def _gan(ctx: Ctx) -> bool:
    return ctx.state.extra["phase"] == "gan"


def _mse_loss(ctx: Ctx) -> torch.Tensor:
    """SRResNet's pixel loss (the whole G loss while warming up)."""
    sr = ctx.state.G(ctx.v["lr"]) if "sr" not in ctx.v else ctx.v["sr"]
    ctx.v["sr"] = sr
    mse = F.mse_loss(sr.float(), ctx.v["hr"])
    ctx.out["mse"] = mse.detach()
    return mse


def _d_loss(ctx: Ctx) -> torch.Tensor:
    state = ctx.state
    sr = ctx.v["sr"] = state.G(ctx.v["lr"])
    return state.loss.d(state.D(ctx.v["hr"]), state.D(sr.detach()))


def _feature(ctx: Ctx) -> torch.Tensor:
    backbone = content_features(ctx.state)  # frozen: gradients reach sr only
    return F.mse_loss(backbone(ctx.v["sr"]), backbone(ctx.v["hr"]))


def _adv(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["sr"]))


# mse phase: G <- MSE(G(LR), HR), D untouched. gan phase (from step warmup_steps):
#   D <- loss.d(D(HR), D(G(LR)));  G <- MSE + feature_weight * feature MSE + adv_weight * loss.g(D(G(LR))).
step = Step((
    Phase("D", _d_loss, when=_gan),
    Phase("G", _mse_loss, terms=(
        Term("feature", _feature, lambda ctx: _options(ctx.state.options).feature_weight if _gan(ctx) else 0.0),
        Term("adv", _adv, lambda ctx: _options(ctx.state.options).adv_weight if _gan(ctx) else 0.0))),
), prepare=_prepare)


# ---- inference and evaluation -----------------------------------------------------------------------
def infer(G: nn.Module) -> nn.Module:
    """The module exported and used to upscale: G itself, forward(LR images) -> SR images."""
    return G


def heldout(images_a: torch.Tensor, images_b: torch.Tensor | None, options=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out HR images (N, C, R, R) in [-1, 1] -> (LR inputs, HR targets); superres data has no B."""
    return downsample(images_a, _options(options).scale), images_a


def upscale(module: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """module(inputs) in eval mode (BN's running statistics, as the exported program), in batches."""
    return run_batched(module, inputs, batch_size=batch_size)


def score(infer_module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, options=None) -> dict[str, float]:
    """PSNR and SSIM of G(LR) vs HR on luma (Y of BT.601 for RGB), `scale` px shaved off each border
    (the SR papers' convention: the border pixels lack context), and the same for bicubic upsampling,
    the baseline a useful model must beat."""
    from gan_core.metrics.pixel import psnr, ssim

    if targets is None:
        raise ValueError("srgan: scoring needs the HR targets, got none")
    s = _options(options).scale
    out, bicubic = upscale(infer_module, inputs).clamp(-1, 1), upsample(inputs, s)
    kw = {"y_channel": True, "shave": s}
    return {"psnr": psnr(out, targets, **kw), "ssim": ssim(out, targets, **kw),
            "psnr_bicubic": psnr(bicubic, targets, **kw), "ssim_bicubic": ssim(bicubic, targets, **kw)}


def check(cfg) -> None:
    """The warm-up must end inside the run, or it never reaches the GAN phase it is named for."""
    o = cfg.family
    if o is not None and o.warmup_steps >= cfg.train.steps:  # -1 (two thirds of the run) always fits
        raise ConfigError("family.srgan.warmup_steps", f"{o.warmup_steps} must be < train.steps={cfg.train.steps}: "
                                                       "the run would never leave the MSE-only phase")
