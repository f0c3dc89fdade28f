"""StackGAN (Zhang et al. 2017): text -> image in two stages.

Text: a caption encoder trained here (gan_core.text.TextEncoder; no pretrained char-CNN-RNN exists
offline), then conditioning augmentation per stage (c = mu + sigma * eps, KL to N(0, I) weighted by
`kl_weight`). Stage I: [z, c1] -> a low-resolution image (data.resolution / 2: 16 px at 32). Stage II:
the Stage-I image, encoded down to R/4, joined with c2, residual blocks, upsampled to data.resolution:
a correction (zero at the start) added to the bilinearly upsampled Stage-I image.
Both D's are matching-aware (GAN-CLS): (real image, its caption) is real; (real image, another image's
caption: the batch's captions rolled by one) and (fake, its caption) are fake, weighted 1/2 each. Each
D joins the caption's code to its 4x4 map (StackGAN) and adds a projection term (Miyato 2018).

Stages train in order, as the paper: Stage I for `stage1_steps`, then Stage II with Stage I (its text
encoder, CA and G) frozen in eval mode. The stage follows from the step alone, and G keeps it as a
buffer too, so a checkpoint (or an exported program) knows which output is the model's: Stage II's,
or Stage I's upsampled when the run ended in Stage I (stage1_steps = train.steps: a Stage-I-only model).
Text encoders: G's learns through G's loss; each D has its own, learnt through D's loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.latent import LatentSpec
from gan_core.options import integer, number
from gan_core.phases import Ctx, Phase, Step, Term, unwrap
from gan_core.resample import downsample
from gan_core.sections import ConfigError, DataConfig, ModelConfig
from gan_core.steps import images
from gan_core.text import Conditioning, TextEncoder, pick_captions

if TYPE_CHECKING:
    from gan_core.sections import TrainConfig

DEFAULTS = {"model": {"loss": "nonsat", "g_channels": 32, "d_channels": 32},
            "train": {"lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999}}  # the paper's Adam


@dataclass(frozen=True)
class Options:
    """stackgan's settings (params `family: {stackgan: {...}}`)."""
    # Stage-I steps; -1 (the default) takes half of train.steps. = train.steps: a Stage-I-only model.
    stage1_steps: int = -1
    kl_weight: float = 2.0  # the official StackGAN config's KL coefficient (on the KL averaged over c's dimensions)
    # Stage II's KL weight. At kl_weight its code fell to the prior (KL 0.001: the text reached Stage II
    # only through the Stage-I image, so Stage II could not correct what Stage I drew wrong)
    stage2_kl_weight: float = 0.0
    text_dim: int = 128  # the caption embedding
    c_dim: int = 32  # conditioning augmentation's code (the paper's 128 at 64-256 px)
    vocab: int = 512  # ids the encoders embed; rarer words (ids >= vocab) read as UNK

    def __post_init__(self):
        integer("stage1_steps", self.stage1_steps, -1, note=" (-1: half of train.steps)")
        number("kl_weight", self.kl_weight)
        number("stage2_kl_weight", self.stage2_kl_weight)
        for name in ("text_dim", "c_dim"):
            integer(name, getattr(self, name), 1)
        integer("vocab", self.vocab, 3)


def _options(options) -> Options:
    return options if options is not None else Options()


def stage1_steps(o: Options, t: "TrainConfig") -> int:
    return o.stage1_steps if o.stage1_steps >= 0 else t.steps // 2


def check(cfg) -> None:
    o = cfg.family
    if o is not None and o.stage1_steps > cfg.train.steps:
        raise ConfigError("family.stackgan.stage1_steps", f"{o.stage1_steps} must be <= train.steps="
                                                           f"{cfg.train.steps} (= train.steps: Stage I only)")


def check_resolution(d: DataConfig) -> None:
    r = d.resolution
    if r < 16 or r & (r - 1):
        raise ConfigError("data.resolution", f"stackgan needs a power of two >= 16 (Stage I at half of it), got {r}")


# ---- generator ------------------------------------------------------------------------------------
def up(cin: int, cout: int) -> nn.Sequential:
    """x2: nearest upsample + conv3 + BN + ReLU (StackGAN's upBlock)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(True))


class Residual(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
                                  nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w))

    def forward(self, x):
        return F.relu(x + self.body(x))


class StageOne(nn.Module):
    """[z, c] -> (B, C, R/2, R/2): dense to 4x4 at 4x width, upsampled, halving the width (floor: width)."""

    def __init__(self, in_dim: int, width: int, out_res: int, channels: int):
        super().__init__()
        n = int(math.log2(out_res)) - 2
        self.w0 = width * 2 ** min(n, 2)
        self.fc = nn.Sequential(nn.Linear(in_dim, self.w0 * 16, bias=False), nn.BatchNorm1d(self.w0 * 16),
                                nn.ReLU(True))
        ws = [self.w0] + [max(width, self.w0 // 2 ** (i + 1)) for i in range(n)]
        self.ups = nn.Sequential(*[up(a, b) for a, b in zip(ws, ws[1:])])
        self.out = nn.Sequential(nn.Conv2d(ws[-1], channels, 3, 1, 1), nn.Tanh())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.ups(self.fc(h).view(-1, self.w0, 4, 4)))


class StageTwo(nn.Module):
    """(Stage-I image (B, C, R/2, R/2), c) -> (B, C, R, R): encode to R/4, join c, 2 residual blocks,
    upsample twice, added (tanh) to the upsampled Stage-I image and clamped to [-1, 1]."""

    def __init__(self, channels: int, width: int, c_dim: int):
        super().__init__()
        w = 2 * width
        self.encode = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(True),
                                    nn.Conv2d(width, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True))
        self.joint = nn.Sequential(nn.Conv2d(w + c_dim, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True))
        self.res = nn.Sequential(Residual(w), Residual(w))
        self.ups = nn.Sequential(up(w, width), up(width, width))
        # a correction to the upsampled Stage-I image, zero at the start: Stage II begins as the Stage-I
        # model it refines instead of from noise (measured: from scratch, alignment fell 0.68 -> 0.49 first)
        self.out = nn.Conv2d(width, channels, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x1: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.encode(x1)
        h = self.joint(torch.cat([h, c[:, :, None, None].expand(-1, -1, *h.shape[2:])], 1))
        base = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=False)
        return (base + torch.tanh(self.out(self.ups(self.res(h))))).clamp(-1, 1)


class StackGenerator(nn.Module):
    """forward(tokens (B, L) int64, z (B, z_dim)) -> images (B, C, R, R) in [-1, 1]: the model's output
    (Stage II's, or Stage I's upsampled while/if it ended in Stage I). Training calls it with
    `stage` 1 or 2 and gets (that stage's image, its KL)."""
    text = True  # conditioned on token ids (gan_core.family.Family.conditioning)

    def __init__(self, channels: int, resolution: int, z_dim: int, width: int, o: Options):
        super().__init__()
        self.latent = LatentSpec(z_dim)
        self.resolution, self.vocab = resolution, o.vocab
        self.encoder = TextEncoder(o.vocab, o.text_dim)
        self.ca1, self.ca2 = Conditioning(o.text_dim, o.c_dim), Conditioning(o.text_dim, o.c_dim)
        self.g1 = StageOne(z_dim + o.c_dim, width, resolution // 2, channels)
        self.g2 = StageTwo(channels, width, o.c_dim)
        self.register_buffer("stage", torch.ones((), dtype=torch.long))
        self.current = 1  # the buffer's value, kept in Python so forward never reads the device
        # the dataset version's Vocabulary.to_dict(), set by training (gan_core.text.attach_vocabulary):
        # in the state dict (extra state) and the export metadata, so `sample --text` reads its own ids
        self.vocabulary: dict | None = None

    def get_extra_state(self) -> dict:
        return {"vocabulary": self.vocabulary}

    def set_extra_state(self, state: dict) -> None:
        self.vocabulary = state.get("vocabulary")

    def export_inputs(self, n: int) -> list[tuple]:
        """(name, example, dynamic shape) of the exported program's inputs: token ids (n, L), z (n, z_dim)."""
        g = torch.Generator().manual_seed(0)
        length = int((self.vocabulary or {}).get("max_tokens", 32))
        tokens = torch.randint(2, self.vocab, (n, length), generator=g)
        tokens[:, 4:] = 0  # captions are short and padded
        z = torch.randn(n, self.latent.z_dim, generator=g)
        return [("tokens", tokens.numpy(), (-1, length)), ("z", z.numpy(), (-1, self.latent.z_dim))]

    def export_meta(self) -> dict:
        return {"conditioning": "text", "vocabulary": self.vocabulary, "stage": self.current,
                "inputs": ["tokens", "z"]}

    def set_stage(self, k: int) -> None:
        if k != self.current:
            self.current = k
            self.stage.fill_(k)
            self.train(self.training)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "stage" in state_dict:  # one read at load time
            self.current = int(state_dict[prefix + "stage"])
            self.train(self.training)

    def frozen(self) -> tuple[nn.Module, ...]:
        return (self.encoder, self.ca1, self.g1)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.current == 2:  # Stage I is frozen in Stage II: no BN statistics updates, CA gives mu
            for m in self.frozen():
                m.eval()
        return self

    def _stage_one(self, tokens, z):
        e = self.encoder(tokens)
        c1, kl = self.ca1(e)
        return e, self.g1(torch.cat([z, c1], 1)), kl

    def forward(self, tokens: torch.Tensor, z: torch.Tensor, stage: int = 0, with_kl: bool = False):
        if stage == 1:
            _, x1, kl = self._stage_one(tokens, z)
            return (x1, kl) if with_kl else x1
        if stage == 0 and self.current == 1:
            return F.interpolate(self._stage_one(tokens, z)[1], scale_factor=2, mode="bilinear", align_corners=False)
        with torch.no_grad():  # Stage I is frozen from Stage II on
            e, x1, _ = self._stage_one(tokens, z)
        c2, kl = self.ca2(e)
        x2 = self.g2(x1.detach(), c2)
        return (x2, kl) if with_kl else x2


# ---- discriminator --------------------------------------------------------------------------------
class StageD(nn.Module):
    """(images (B, C, r, r), tokens) -> logits (B,): strided convs to 4x4, the caption's code (its own
    encoder, compressed) replicated and joined, conv3, conv4 to one logit (StackGAN's D)."""

    def __init__(self, channels: int, res: int, width: int, o: Options, code: int = 32):
        super().__init__()
        n = int(math.log2(res)) - 2
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        w = width
        for _ in range(n - 1):
            layers += [nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, True)]
            w *= 2
        self.body = nn.Sequential(*layers)
        self.encoder = TextEncoder(o.vocab, o.text_dim)
        self.code = nn.Sequential(nn.Linear(o.text_dim, code), nn.LeakyReLU(0.2, True))
        self.joint = nn.Sequential(nn.Conv2d(w + code, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                   nn.LeakyReLU(0.2, True), nn.Conv2d(w, 1, 4, 1, 0))
        self.project = nn.Linear(o.text_dim, w, bias=False)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        e = self.encoder(tokens)
        t = self.code(e)[:, :, None, None].expand(-1, -1, *h.shape[2:])
        # + a projection term (Miyato 2018): the caption's embedding dotted with the pooled image features
        return self.joint(torch.cat([h, t], 1)).flatten() + (h.mean((2, 3)) * self.project(e)).sum(1)


class StackDiscriminator(nn.Module):
    """Stage I's D (R/2) and Stage II's (R); the image's size picks which (a shape, not a device read)."""

    def __init__(self, channels: int, resolution: int, width: int, o: Options):
        super().__init__()
        self.resolution = resolution
        self.d1 = StageD(channels, resolution // 2, width, o)
        self.d2 = StageD(channels, resolution, width, o)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return (self.d2 if x.shape[-1] == self.resolution else self.d1)(x, tokens)


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None):
    check_resolution(d)
    return StackGenerator(d.channels, d.resolution, m.z_dim, m.g_channels, _options(options))


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None):
    check_resolution(d)
    return StackDiscriminator(d.channels, d.resolution, m.d_channels, _options(options))


# ---- train step -----------------------------------------------------------------------------------
def stage_of(state, t: "TrainConfig") -> int:
    """1 while state.step (the step about to run) < stage1_steps, else 2."""
    return 1 if state.step < stage1_steps(_options(state.options), t) else 2


def _prepare(ctx: Ctx) -> None:
    """The stage (set on G and G_ema), real images at that stage's size, one caption per image, the
    mismatched captions (rolled by one), z."""
    state, b = ctx.state, ctx.batch
    k = stage_of(state, ctx.cfg)
    unwrap(state.G).set_stage(k)
    state.G_ema.set_stage(k)
    state.extra["stage"] = k
    real = images(ctx)
    tokens = pick_captions(b["captions"].to(state.device, non_blocking=True),
                           b["caption_counts"].to(state.device, non_blocking=True))
    z = torch.randn(real.shape[0], unwrap(state.G).latent.z_dim, device=state.device)
    ctx.v.update(k=k, real=real if k == 2 else downsample(real, 2), tokens=tokens, wrong=tokens.roll(1, 0), z=z)


def _d_loss(ctx: Ctx) -> torch.Tensor:
    s, v = ctx.state, ctx.v
    v["fake"], v["kl"] = s.G(v["tokens"], v["z"], v["k"], True)
    real = s.D(v["real"], v["tokens"])
    loss = 0.5 * (s.loss.d(real, s.D(v["real"], v["wrong"])) + s.loss.d(real, s.D(v["fake"].detach(), v["tokens"])))
    return loss


def _g_loss(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["fake"], ctx.v["tokens"]))


def _kl(ctx: Ctx) -> torch.Tensor:
    return ctx.v["kl"]


def _kl_weight(ctx: Ctx) -> float:
    o = _options(ctx.state.options)
    return o.kl_weight if ctx.v["k"] == 1 else o.stage2_kl_weight


# D <- 1/2 [loss.d(D(x, t), D(x, t_wrong)) + loss.d(D(x, t), D(G(t, z), t))]
# G <- loss.g(D(G(t, z), t)) + kl_weight * KL
step = Step((Phase("D", _d_loss),
             Phase("G", _g_loss, terms=(Term("kl", _kl, _kl_weight),))),
            prepare=_prepare)
