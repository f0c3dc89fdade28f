"""CycleGAN (Zhu et al. 2017): unpaired translation A <-> B with two generators, two discriminators,
an LSGAN adversarial loss, cycle consistency (A -> B -> A returns A) and an identity loss.

G: the ResNet generator of Johnson et al. 2016 as CycleGAN uses it: c7s1-k, d2k, d4k, B residual
blocks at 1/4 resolution (reflect padding), u2k, uk, c7s1-C, tanh. Fully convolutional: any H, W
divisible by 4 and >= 8 (the 1/4-resolution map must be wider than the reflect padding).
D: a PatchGAN: 4x4 convolutions, one logit per overlapping patch (Isola et al. 2017).
D sees fakes through a pool of past fakes (Shrivastava et al. 2017), so it keeps rejecting what G
drew earlier and G cannot oscillate between modes D has forgotten.

Both generators are one module (`Generators`) and both discriminators another, so DDP averages the
gradients of every forward (it only sees forwards called through its wrapper) and TrainState's two
optimizers hold both networks of a kind, as the reference implementation's optimizers do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gan_core.sections import DataConfig, ModelConfig
from gan_core.options import choice, integer, number
from gan_core.inference import run_batched
from gan_core.metrics.frechet import MetricError
from gan_core.metrics.pixel import l1
from gan_core.models.dcgan import dcgan_init
from gan_core.phases import Ctx, Phase, Step, Term, unwrap
from gan_core.steps import images

NORMS = ("instance", "batch")


@dataclass(frozen=True)
class Options:
    cycle_lambda: float = 10.0  # weight of the L1 cycle losses (the paper's lambda)
    identity: float = 0.5  # identity-loss weight as a fraction of cycle_lambda (paper: 0.5 lambda); 0: off
    pool_size: int = 50  # past fakes kept per discriminator (paper: 50); 0: D sees only fresh fakes
    # residual blocks at 1/4 resolution. The paper uses 6 at 128 px and 9 at 256 px; each block adds
    # 16 px of receptive field at the input (two 3x3 convs on a 4x-downsampled map), so 3 blocks
    # already see a whole 16-32 px image and cost half of 6.
    blocks: int = 3
    norm: str = "instance"  # instance (paper: per-image statistics, no batch coupling) | batch

    def __post_init__(self):
        for name in ("cycle_lambda", "identity"):
            number(name, getattr(self, name))
        for name, low in (("pool_size", 0), ("blocks", 1)):
            integer(name, getattr(self, name), low)
        choice("norm", self.norm, NORMS)


def _norm(kind: str, channels: int) -> nn.Module:
    # instance norm without affine parameters, as the reference implementation
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


def _conv_norm_relu(cin: int, cout: int, norm: str, **conv) -> list[nn.Module]:
    # no conv bias: the norm right after removes any per-channel constant
    return [nn.Conv2d(cin, cout, bias=False, **conv), _norm(norm, cout), nn.ReLU(True)]


class ResidualBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm); reflect padding avoids the dark borders
    zero padding leaves in translated images."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), *_conv_norm_relu(channels, channels, norm, kernel_size=3),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), _norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1]; widths k, 2k, 4k with k = base."""

    def __init__(self, channels: int, base: int, blocks: int, norm: str):
        super().__init__()
        k = base
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), *_conv_norm_relu(channels, k, norm, kernel_size=7)]
        layers += _conv_norm_relu(k, 2 * k, norm, kernel_size=3, stride=2, padding=1)  # H/2
        layers += _conv_norm_relu(2 * k, 4 * k, norm, kernel_size=3, stride=2, padding=1)  # H/4
        layers += [ResidualBlock(4 * k, norm) for _ in range(blocks)]
        for cin, cout in ((4 * k, 2 * k), (2 * k, k)):  # fractionally strided: each doubles H and W exactly
            layers += [nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1, bias=False),
                       _norm(norm, cout), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(k, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)  # N(0, 0.02), the reference implementation's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def patch_downsamplings(resolution: int) -> int:
    """Stride-2 layers of the PatchGAN: the paper's 3 (70 px patches) from 128 px up; below, fewer,
    so a patch (16, 34, 70 px for 1, 2, 3 layers) stays about half the image or less."""
    return max(1, min(3, int(math.log2(resolution)) - 4))


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) -> per-patch logits (B, 1, h, w): C64 (no norm), C128, ... stride 2, then one
    stride-1 layer and a 1-channel conv, all 4x4, LeakyReLU(0.2); widths capped at 8x base."""

    def __init__(self, channels: int, resolution: int, base: int, norm: str):
        super().__init__()
        n = patch_downsamplings(resolution)
        w = [base * min(2 ** i, 8) for i in range(n + 1)]
        layers: list[nn.Module] = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, n + 1):
            stride = 2 if i < n else 1
            layers += [nn.Conv2d(w[i - 1], w[i], 4, stride, 1, bias=False), _norm(norm, w[i]),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(w[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Generators(nn.Module):
    """a2b: A -> B, b2a: B -> A. One forward gives every image the G update needs."""

    def __init__(self, channels: int, base: int, blocks: int, norm: str, identity: bool = True):
        super().__init__()
        self.a2b = ResnetGenerator(channels, base, blocks, norm)
        self.b2a = ResnetGenerator(channels, base, blocks, norm)
        self.identity = identity

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        fake_b, fake_a = self.a2b(real_a), self.b2a(real_b)
        out = {"fake_b": fake_b, "fake_a": fake_a, "rec_a": self.b2a(fake_b), "rec_b": self.a2b(fake_a)}
        if self.identity:  # a generator fed its own target domain should leave the image alone
            out["idt_b"], out["idt_a"] = self.a2b(real_b), self.b2a(real_a)
        return out


class Discriminators(nn.Module):
    """d_a judges domain A (real A vs b2a's fakes), d_b domain B."""

    def __init__(self, channels: int, resolution: int, base: int, norm: str):
        super().__init__()
        self.d_a = PatchDiscriminator(channels, resolution, base, norm)
        self.d_b = PatchDiscriminator(channels, resolution, base, norm)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d_a(x_a), self.d_b(x_b)


class Translator(nn.Module):
    """The exported inference module: images (B, C, H, W) in [-1, 1], direction (B,) int64
    (0 = a2b, 1 = b2a) -> translated images. Runs both generators on every row and picks per row
    with torch.where: twice the compute of one direction, but one graph with no data-dependent
    branch, which torch.export needs (a mixed batch would otherwise have to be split)."""

    def __init__(self, a2b: nn.Module, b2a: nn.Module):
        super().__init__()
        self.a2b, self.b2a = a2b, b2a

    def forward(self, images: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        to_a = (direction == 1).view(-1, 1, 1, 1)  # values are not checked (no data-dependent errors in
        # an exported graph): anything but 1 translates A -> B
        return torch.where(to_a, self.b2a(images), self.a2b(images))


# ---- image pool -----------------------------------------------------------------------------------
def pool_draw(pool: torch.Tensor | None, fakes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shrivastava et al. 2017's history of fakes, as CycleGAN's reference ImagePool: image by image,
    while the pool holds fewer than `size` the new fake is stored and shown to D; once full, with
    probability 1/2 D sees a random stored fake, which the new one replaces, else the new fake.

    fakes (B, C, H, W), detached; pool (n <= size, C, H, W) float32, or None (empty). Returns (the B
    images D sees, on fakes' device and dtype; the new pool, float32 on fakes' device). Pure: `pool`
    is not changed. Draws B uniforms and B slots from the torch RNG of fakes' device on every call
    (whether or not the pool is full), so a checkpointed RNG replays the same choices after a resume.
    Nothing waits for the device: the coin and the slot choose with where/index ops on the device
    (the loop runs over the batch on the host, which knows the pool's length from its shape).
    """
    if size == 0:
        return fakes.detach(), pool
    new = fakes.detach().float()  # float32, not uint8: a pooled fake is exactly what G drew
    coins = torch.rand(len(new), device=new.device)
    slots = torch.randint(size, (len(new),), device=new.device)
    # a copy: the caller's pool stays as it was (cut to `size` should a resumed run ask for a smaller
    # pool than its checkpoint holds; moved to the fakes' device, as a checkpoint loads on the CPU)
    pool = new[:0] if pool is None else pool[:size].detach().to(new.device, torch.float32, copy=True)
    if pool.shape[1:] != new.shape[1:]:
        raise ValueError(f"image pool holds {tuple(pool.shape[1:])} images but G drew {tuple(new.shape[1:])} "
                         "(a resume with another data.resolution or data.channels?)")
    shown = fakes.detach().clone()
    for i in range(len(new)):
        if len(pool) < size:
            pool = torch.cat([pool, new[i:i + 1]])
            continue
        j, take = slots[i:i + 1], coins[i] < 0.5
        stored = pool.index_select(0, j)
        shown[i] = torch.where(take, stored[0], new[i]).to(shown.dtype)
        pool.index_copy_(0, j, torch.where(take, new[i:i + 1], stored))
    return shown, pool


# ---- the train step -------------------------------------------------------------------------------
def _l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean()


def _opts(ctx: Ctx) -> Options:
    return ctx.state.options if ctx.state.options is not None else Options()


def _translate_batch(ctx: Ctx) -> None:
    """One G forward (both directions, cycles, identities) that both phases read."""
    real_a, real_b = images(ctx), images(ctx, "images_b")
    with ctx.state.autocast():
        ctx.v.update(real_a=real_a, real_b=real_b, g=ctx.state.G(real_a, real_b))


def _d_loss(ctx: Ctx) -> torch.Tensor:
    """Real images vs pool-drawn fakes; each D's loss halved, which slows D relative to G (the paper)."""
    state, out, size = ctx.state, ctx.v["g"], _opts(ctx).pool_size
    fake_a, state.extra["pool_a"] = pool_draw(state.extra.get("pool_a"), out["fake_a"], size)
    fake_b, state.extra["pool_b"] = pool_draw(state.extra.get("pool_b"), out["fake_b"], size)
    real_la, real_lb = state.D(ctx.v["real_a"], ctx.v["real_b"])
    fake_la, fake_lb = state.D(fake_a, fake_b)
    return 0.5 * (state.loss.d(real_la, fake_la) + state.loss.d(real_lb, fake_lb))


def _g_loss(ctx: Ctx) -> torch.Tensor:
    """Fool both (frozen) D with this step's fresh fakes."""
    la, lb = ctx.d_plain(ctx.v["g"]["fake_a"], ctx.v["g"]["fake_b"])
    return ctx.state.loss.g(la) + ctx.state.loss.g(lb)


def _cycle(ctx: Ctx) -> torch.Tensor:
    """A -> B -> A returns A, and B -> A -> B returns B (sum of the two L1 terms)."""
    g = ctx.v["g"]
    return _l1(g["rec_a"], ctx.v["real_a"]) + _l1(g["rec_b"], ctx.v["real_b"])


def _identity(ctx: Ctx) -> torch.Tensor | None:
    """A generator fed its own target domain leaves the image alone (None when the loss is off)."""
    g = ctx.v["g"]
    return None if "idt_a" not in g else _l1(g["idt_a"], ctx.v["real_a"]) + _l1(g["idt_b"], ctx.v["real_b"])


# Both D updated once on the step's batch (n_critic is 1), then both G against the new D. loss_g is
# the adversarial terms + cycle_lambda * cycle + identity * cycle_lambda * identity.
step = Step((
    Phase("D", _d_loss),
    Phase("G", _g_loss, terms=(
        Term("cycle", _cycle, lambda ctx: _opts(ctx).cycle_lambda),
        Term("identity", _identity, lambda ctx: _opts(ctx).identity * _opts(ctx).cycle_lambda))),
), prepare=_translate_batch)


# ---- builders, inference, evaluation --------------------------------------------------------------
def build_generator(m: ModelConfig, d: DataConfig, n_classes: int = 0, options: Options | None = None) -> Generators:
    o = options or Options()
    return Generators(d.channels, m.g_channels, o.blocks, o.norm, identity=o.identity * o.cycle_lambda > 0)


def build_discriminator(m: ModelConfig, d: DataConfig, n_classes: int = 0,
                        options: Options | None = None) -> Discriminators:
    o = options or Options()
    return Discriminators(d.channels, d.resolution, m.d_channels, o.norm)


def infer(G: nn.Module) -> Translator:
    """The module that translates and is exported: G's (or G_ema's) two generators, shared, not copied."""
    G = unwrap(G)
    return Translator(G.a2b, G.b2a)


def heldout(images_a: torch.Tensor, images_b: torch.Tensor | None, options: Options | None = None):
    """Held-out domain-A images are the inputs; the targets are their known B counterparts where the
    dataset has aligned ground truth (images_b is None otherwise: unpaired data has none)."""
    if images_b is not None and images_b.shape != images_a.shape:
        raise MetricError(f"held-out images_b {tuple(images_b.shape)} do not align with images "
                         f"{tuple(images_a.shape)}: ground truth of A -> B needs one B row per A row")
    return images_a, images_b


def _translate(translator: nn.Module, x: torch.Tensor, direction: int, batch: int = 256) -> torch.Tensor:
    return run_batched(translator, x, direction, batch_size=batch)


def score(translator: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
          options: Options | None = None) -> dict[str, float]:
    """cycle_l1: mean |b2a(a2b(x)) - x| over held-out A (an identity map also scores 0: it says G
    keeps the content, not that it translates). With ground truth, l1_a2b = |a2b(x) - target| and
    l1_identity = |x - target|, the error of not translating at all, which a useful a2b beats."""
    fake_b = _translate(translator, inputs, 0)
    out = {"cycle_l1": l1(_translate(translator, fake_b, 1), inputs)}
    if targets is not None:
        out["l1_a2b"] = l1(fake_b, targets)
        out["l1_identity"] = l1(inputs, targets)
    return out
