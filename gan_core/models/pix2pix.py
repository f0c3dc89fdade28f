"""Pix2pix (Isola et al. 2017): paired image-to-image translation A -> B with a conditional GAN.

G: a U-Net. The encoder halves the image down to 1x1 at the training resolution (depth =
log2(resolution)) with 4x4 stride-2 convs, LeakyReLU(0.2), no norm on the first layer; the decoder
doubles it back with 4x4 stride-2 transposed convs, ReLU, and concatenates the encoder map of the
same size (the skips carry A's low-level structure, edges, straight to the output); tanh output.
Widths start at `model.g_channels` and double per halving, capped at 8x (C64-C128-C256-C512-C512...).
Dropout in the first decoder layers is the paper's noise source: it is active in train mode only.
Fully convolutional: at inference H and W may be any multiples of 2**depth.

D: a PatchGAN that sees A and B together (channels concatenated) and returns one logit per patch.

Loss: the cGAN loss on (A, B) vs (A, G(A)) plus `l1_lambda` * L1(G(A), B). The L1 term fixes the
low frequencies; D only has to judge local texture, which is why a patch D suffices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gan_core.sections import DataConfig, ModelConfig
from gan_core.options import choice, number
from gan_core.inference import run_batched
from gan_core.models.dcgan import dcgan_init
from gan_core.phases import Ctx, Phase, Step, Term
from gan_core.steps import images

NORMS = ("batch", "instance")
MAX_MULT = 8  # widths stop doubling at 8x the base (the paper's 512 = 8 * 64)
MAX_DROPOUT_LAYERS = 3  # the paper's "dropout in the first 3 decoder layers"


@dataclass(frozen=True)
class Options:
    """pix2pix's settings (params section `pix2pix:`)."""
    l1_lambda: float = 100.0  # weight of L1(G(A), B) next to the cGAN loss (the paper's lambda)
    norm: str = "batch"  # batch | instance, in G and D (batch at batch size 1 is instance norm at train time)
    dropout: float = 0.5  # dropout probability in the first decoder layers (train mode only)

    def __post_init__(self):
        number("l1_lambda", self.l1_lambda)
        choice("norm", self.norm, NORMS)
        number("dropout", self.dropout, 0, 1, high_open=True)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # affine-free, no running statistics, as in the reference: each image normalised by itself
    return nn.InstanceNorm2d(channels)


def _width(base: int, i: int) -> int:
    return base * min(2 ** i, MAX_MULT)


class UNetGenerator(nn.Module):
    """(B, C_in, H, W) in [-1, 1] -> (B, C_out, H, W) in [-1, 1]; H, W multiples of 2**depth."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, base: int,
                 norm: str = "batch", dropout: float = 0.5):
        super().__init__()
        depth = int(math.log2(resolution))  # halvings from the training resolution down to 1x1
        self.depth, self.multiple, self.resolution = depth, 2 ** depth, resolution
        bias = norm != "batch"  # batch norm's beta already is a bias
        enc = [_width(base, i) for i in range(depth)]
        downs: list[nn.Module] = [nn.Conv2d(in_channels, enc[0], 4, 2, 1)]  # no norm on the input layer
        for i in range(1, depth):
            layers = [nn.LeakyReLU(0.2), nn.Conv2d(enc[i - 1], enc[i], 4, 2, 1, bias=bias or i == depth - 1)]
            if i < depth - 1:  # the innermost map is 1x1: instance norm of one value is 0, batch norm
                layers.append(_norm(norm, enc[i]))  # at batch size 1 fails; the reference has none
            downs.append(nn.Sequential(*layers))
        # Dropout in the paper's first 3 decoder layers, but in at most half of them, so that a
        # shallow (small-image) U-Net keeps noise-free layers next to its output.
        n_drop = min(MAX_DROPOUT_LAYERS, (depth - 1) // 2) if dropout > 0 else 0
        ups: list[nn.Module] = []
        for j in range(depth - 1):  # decoder layer j outputs encoder level depth-2-j's size and width
            cin = enc[depth - 1] if j == 0 else 2 * enc[depth - 1 - j]  # its input + the skip
            cout = enc[depth - 2 - j]
            layers = [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias), _norm(norm, cout)]
            if j < n_drop:
                layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * enc[0], out_channels, 4, 2, 1), nn.Tanh()))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)
        dcgan_init(self)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        torch._check(a.shape[-2] % self.multiple == 0 and a.shape[-1] % self.multiple == 0,
                     lambda: f"pix2pix G: height and width must be multiples of {self.multiple} "
                             f"(2**depth, depth fixed by the training resolution), got {tuple(a.shape)}")
        skips = []
        h = a
        for down in self.downs:
            h = down(h)
            skips.append(h)
        for j, up in enumerate(self.ups):
            if j > 0:  # concatenate the encoder map of the same size (U-Net skip)
                h = torch.cat([h, skips[self.depth - 1 - j]], dim=1)
            h = up(h)
        return h


def patch_layers(resolution: int) -> int:
    """Stride-2 layers of the PatchGAN at this resolution.

    With n stride-2 4x4 convs, then a stride-1 4x4 conv and the stride-1 4x4 output conv, one logit
    sees 9 * 2**n - 2 pixels on a side (70 for the paper's n = 3 at 256). We take the largest n whose
    field is at most half the image, so the field stays between a quarter and half of it as the
    paper's 70/256 does: 7 px at 8 and 16 (n = 0; 8 is too small for less than 7), 16 at 32 and 64,
    34 at 128, 70 at 256, 142 at 512.
    """
    n = 0
    while 9 * 2 ** (n + 1) - 2 <= resolution // 2:
        n += 1
    return n


class PatchDiscriminator(nn.Module):
    """(A, B) -> per-patch logits (B, 1, h, w): is B a real translation of A, patch by patch?
    C64-C128-C256-C512 at 256 (4x4, stride 2 three times, then stride 1) plus a 1-channel output."""

    def __init__(self, channels_a: int, channels_b: int, resolution: int, base: int, norm: str = "batch"):
        super().__init__()
        n = patch_layers(resolution)
        self.receptive_field = 9 * 2 ** n - 2
        bias = norm != "batch"
        cin, layers = channels_a + channels_b, []
        for i in range(n + 1):  # n stride-2 convs, then one stride-1 conv
            cout = _width(base, i)
            layers.append(nn.Conv2d(cin, cout, 4, 2 if i < n else 1, 1, bias=bias or i == 0))
            if i > 0:  # no norm on the input layer
                layers.append(_norm(norm, cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=1))


def _options(options) -> Options:
    return options if options is not None else Options()


def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> UNetGenerator:
    o = _options(options)
    return UNetGenerator(d.channels, d.channels, d.resolution, m.g_channels, o.norm, o.dropout)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> PatchDiscriminator:
    return PatchDiscriminator(d.channels, d.channels, d.resolution, m.d_channels, _options(options).norm)


# ---- the train step: D on (A, B) vs (A, G(A)), then G on the cGAN loss + lambda * L1 --------------
def _d_loss(ctx: Ctx) -> torch.Tensor:
    """Both D forwards and G's forward go through state.D / state.G, so DDP averages their gradients."""
    state = ctx.state
    a, b = images(ctx), images(ctx, "images_b")
    fake = state.G(a)
    ctx.v.update(a=a, b=b, fake=fake)
    return state.loss.d(state.D(a, b), state.D(a, fake.detach()))  # losses average over patches


def _g_loss(ctx: Ctx) -> torch.Tensor:
    return ctx.state.loss.g(ctx.d_plain(ctx.v["a"], ctx.v["fake"]))


def _l1_term(ctx: Ctx) -> torch.Tensor:
    return (ctx.v["fake"] - ctx.v["b"]).abs().mean()  # in [-1, 1] units


# The paper halves D's objective "which slows down the rate at which D learns relative to G"; loss_d is
# reported unhalved, comparable with the other families. n_critic is 1 (the family's check says so).
step = Step((
    Phase("D", _d_loss, scale=0.5),
    Phase("G", _g_loss, terms=(Term("l1", _l1_term, lambda ctx: _options(ctx.state.options).l1_lambda),)),
))


def infer(G: nn.Module) -> nn.Module:
    """The module exported and used to translate: G itself, forward(images A) -> images B."""
    return G


def heldout(images_a: torch.Tensor, images_b: torch.Tensor | None, options=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out pairs are used as they are: G translates A, and is compared with B."""
    if images_b is None:
        raise ValueError("pix2pix: held-out data needs paired targets (images_b), got none")
    if images_a.shape[0] != images_b.shape[0]:
        raise ValueError(f"pix2pix: held-out pairs differ in count: {images_a.shape[0]} A vs {images_b.shape[0]} B")
    return images_a, images_b


def translate(G: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """G(inputs) in eval mode (not the paper's test-time dropout: see gan_core.inference), in batches."""
    return run_batched(G, inputs, batch_size=batch_size)


def score(infer_module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
          options=None) -> dict[str, float]:
    """L1, PSNR and SSIM of G(inputs) against targets, all (N, C, H, W) in [-1, 1], and two baselines
    a useful model must beat: l1_identity (output = input) and l1_mean (output = the mean image of
    these held-out targets; it sees the targets, so it is, if anything, a generous baseline)."""
    from gan_core.metrics.pixel import l1, psnr, ssim

    _, targets = heldout(inputs, targets)
    out = translate(infer_module, inputs).float()
    mean_image = targets.float().mean(0, keepdim=True).expand_as(targets)
    metrics = {"l1": l1(out, targets), "psnr": psnr(out, targets, y_channel=False, shave=0),
               "ssim": ssim(out, targets, y_channel=False, shave=0), "l1_mean": l1(mean_image, targets)}
    if inputs.shape == targets.shape:  # identity is a baseline only when A and B have the same shape
        metrics["l1_identity"] = l1(inputs.float(), targets.float())
    return metrics
