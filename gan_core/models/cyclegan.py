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
from typing import TYPE_CHECKING

import torch
from torch import nn

from gan_core.config import ConfigError, DataConfig, ModelConfig
from gan_core.data import to_float
from gan_core.inference import run_batched
from gan_core.metrics.frechet import MetricError
from gan_core.metrics.pixel import l1
from gan_core.models.dcgan import dcgan_init
from gan_core.steps import set_requires_grad, unwrap

if TYPE_CHECKING:
    from gan_core.config import TrainConfig
    from gan_core.train import TrainState

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
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"family.{name}", f"must be a finite number >= 0, got {v!r}")
        for name, low in (("pool_size", 0), ("blocks", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"family.{name}", f"must be an integer >= {low}, got {v!r}")
        if self.norm not in NORMS:
            raise ConfigError("family.norm", f"must be one of {NORMS}, got {self.norm!r}")


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

    fakes (B, C, H, W), detached; pool (n <= size, C, H, W) float32 on the CPU, or None (empty).
    Returns (the B images D sees, on fakes' device and dtype; the new pool). Pure: `pool` is not
    changed. Draws B uniforms and B slots from the global torch RNG on every call (whether or not
    the pool is full), so a checkpointed RNG replays the same choices after a resume.
    """
    if size == 0:
        return fakes.detach(), pool
    new = fakes.detach().float().cpu()  # float32, not uint8: a pooled fake is exactly what G drew
    coins, slots = torch.rand(len(new)), torch.randint(size, (len(new),))
    # a copy on the CPU: the caller's pool stays as it was, also when a checkpoint was mapped to a GPU
    # (cut to `size` should a resumed run ask for a smaller pool than its checkpoint holds)
    pool = new[:0] if pool is None else pool[:size].detach().to("cpu", torch.float32, copy=True)
    if pool.shape[1:] != new.shape[1:]:
        raise ValueError(f"image pool holds {tuple(pool.shape[1:])} images but G drew {tuple(new.shape[1:])} "
                         "(a resume with another data.resolution or data.channels?)")
    shown = fakes.detach().clone()
    for i in range(len(new)):
        if len(pool) < size:
            pool = torch.cat([pool, new[i:i + 1]])
        elif coins[i] < 0.5:
            j = int(slots[i])
            shown[i] = pool[j].to(shown.device, shown.dtype)
            pool[j] = new[i]
    return shown, pool


# ---- the train step -------------------------------------------------------------------------------
def _l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean()


def _images(state: "TrainState", batch: dict, key: str) -> torch.Tensor:
    x = to_float(batch[key].to(state.device, non_blocking=True))  # (B, C, R, R) in [-1, 1]
    return x.contiguous(memory_format=torch.channels_last) if state.channels_last else x


def step(state: "TrainState", batches: list, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
    """One CycleGAN step: one G forward (both directions, cycles, identities), both D updated on real
    images and pool-drawn fakes, then both G updated against the new D (frozen, plain module, as in
    gan_core.steps). Returns detached 0-d loss_d, loss_g, cycle and, when on, identity (unweighted
    sums of the two directions' L1 terms)."""
    if len(batches) != 1:
        raise ConfigError("train.n_critic", f"cyclegan updates D once per G update (set 1), got {len(batches)}")
    opts: Options = state.options if state.options is not None else Options()
    d_plain = unwrap(state.D)
    real_a, real_b = _images(state, batches[0], "images"), _images(state, batches[0], "images_b")
    with state.autocast():
        out = state.G(real_a, real_b)
    # ---- D: real vs pooled fakes; each D's loss halved, which slows D relative to G (the paper)
    fake_a, state.extra["pool_a"] = pool_draw(state.extra.get("pool_a"), out["fake_a"], opts.pool_size)
    fake_b, state.extra["pool_b"] = pool_draw(state.extra.get("pool_b"), out["fake_b"], opts.pool_size)
    with state.autocast():
        real_la, real_lb = state.D(real_a, real_b)
        fake_la, fake_lb = state.D(fake_a, fake_b)
        loss_d = 0.5 * (state.loss.d(real_la, fake_la) + state.loss.d(real_lb, fake_lb))
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()
    # ---- G: fool both D, close both cycles, leave target-domain images alone
    set_requires_grad(d_plain, False)
    with state.autocast():
        la, lb = d_plain(out["fake_a"], out["fake_b"])
        cycle = _l1(out["rec_a"], real_a) + _l1(out["rec_b"], real_b)
        loss_g = state.loss.g(la) + state.loss.g(lb) + opts.cycle_lambda * cycle
        metrics = {"cycle": cycle.detach()}
        if "idt_a" in out:
            identity = _l1(out["idt_a"], real_a) + _l1(out["idt_b"], real_b)
            loss_g = loss_g + opts.identity * opts.cycle_lambda * identity
            metrics["identity"] = identity.detach()
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    set_requires_grad(d_plain, True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), **metrics}


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
