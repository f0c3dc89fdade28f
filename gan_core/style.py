"""The layers of style-based generators (gan_core.models.stylegan): the mapping network, truncation
and style mixing of w, per-layer noise inputs, AdaIN (StyleGAN v1), the modulated/demodulated
convolution and toRGB of StyleGAN2; and, around a style G, its path-length regulariser and the Sampler
(truncation and mixing at sampling time). Plain modules: the family file composes them into G and D."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.equalized import EqualConv2d, EqualLinear, PixelNorm

SQRT2 = math.sqrt(2)  # v2's activation gain: lrelu * sqrt(2) keeps the signal's scale


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


# ---- style plumbing ---------------------------------------------------------------------------------
def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi) -> torch.Tensor:
    """w_avg + psi (w - w_avg): psi < 1 trades variety for typical, better-drawn samples; psi = 0 gives
    the average image for every z. psi a float or a (B, 1) tensor."""
    return w_avg.lerp(w, psi) if isinstance(psi, float) else w_avg + psi * (w - w_avg)


def mix(ws: torch.Tensor, ws2: torch.Tensor, crossover: torch.Tensor) -> torch.Tensor:
    """Style mixing: layer k of sample b reads ws2 where k >= crossover[b] (num_ws: no mixing).
    ws, ws2 (B, num_ws, w_dim); crossover (B,) int64. torch.where, no data-dependent Python, so it
    exports."""
    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
    return torch.where(layer >= crossover[:, None, None], ws2, ws)


class Mapping(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): PixelNorm, then `layers` x (EqualLinear(lr_mul), LeakyReLU(0.2))."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        body: list[nn.Module] = [PixelNorm()]
        for a, b in zip(dims[:-1], dims[1:]):
            body += [EqualLinear(a, b, lr_mul=lr_mul), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*body)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class NoiseInput(nn.Module):
    """x + strength * noise: one (r, r) Gaussian map per sample, scaled per channel (strength init 0)."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        else:
            noise = self.const.to(x.dtype)
        return x + self.strength * noise


# ---- v1: AdaIN --------------------------------------------------------------------------------------
class AdaIN(nn.Module):
    """Instance-normalise each channel, then scale by 1 + s and shift by b, (s, b) = affine(w):
    the style sets every channel's mean and spread, and nothing of the previous style survives."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels, gain=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8)
        s, b = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + s) + b


class LayerV1(nn.Module):
    """[up2] [conv3x3] -> noise -> bias -> lrelu -> AdaIN(w). Without conv: the 4x4 constant's layer."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, conv: bool = True, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = EqualConv2d(cin, cout, 3, bias=False) if conv else None
        self.noise = NoiseInput(cout, resolution)
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.adain = AdaIN(cout, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if self.up:
            x = up2(x)
        if self.conv is not None:
            x = self.conv(x)
        return self.adain(F.leaky_relu(self.noise(x, noise_mode) + self.bias, 0.2), w)


# ---- v2: weight modulation / demodulation -------------------------------------------------------------
class ModulatedConv(nn.Module):
    """k x k conv whose weight is scaled per sample and input channel by s = affine(w) (bias init 1:
    starts as a plain conv); with demodulation each output channel's weights are rescaled to unit
    L2 norm, which normalises the expected output statistics without touching the activations.

    Computed as StyleGAN2's non-fused path: scale the input channels by s, one shared conv, then scale
    each output channel by its demodulation coefficient. The same result as a per-sample weight in a
    grouped conv, which on CPU measured several times slower (groups = batch)."""

    def __init__(self, cin: int, cout: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0, gain=1.0)
        self.scale, self.padding, self.demodulate = 1 / math.sqrt(cin * kernel * kernel), kernel // 2, demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (B, cin)
        weight = self.weight * self.scale  # (cout, cin, k, k)
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:  # 1 / ||weight * s||_2 per sample and output channel: (B, cout)
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            out = out * d[:, :, None, None]
        return out


class LayerV2(nn.Module):
    """[up2] -> modulated conv3x3 -> noise -> bias -> lrelu * sqrt(2) (the gain keeps unit variance)."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(cin, cout, 3, w_dim)
        self.noise = NoiseInput(cout, resolution)
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.conv(up2(x) if self.up else x, w)
        return F.leaky_relu(self.noise(x, noise_mode) + self.bias, 0.2) * SQRT2


class ToRGBV2(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias: the style also colours the image."""

    def __init__(self, cin: int, channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(cin, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias


# ---- regularisation ------------------------------------------------------------------------------------
def path_length_penalty(G: nn.Module, z: torch.Tensor, decay: float) -> torch.Tensor:
    """StyleGAN2's path-length regularisation: for y ~ N(0, I) / sqrt(H W), the lengths
    ||J_w^T y|| (J: image Jacobian w.r.t. ws, averaged over layers) are pulled to their running
    mean G.pl_mean, so a fixed step in w moves the image a fixed amount wherever w is."""
    ws = G.styles(z)
    img = G.synthesis(ws, "random")
    y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
    lengths = grad.float().pow(2).sum(2).mean(1).sqrt()  # (B,)
    with torch.no_grad():
        G.pl_mean.copy_(G.pl_mean.lerp(lengths.mean().detach(), decay))
    return (lengths - G.pl_mean.detach().clone()).pow(2).mean()


# ---- sampling -------------------------------------------------------------------------------------------
class Sampler(nn.Module):
    """What is evaluated, sampled and exported: (z (B, Z), z_mix (B, Z), psi (B,) float,
    crossover (B,) int64) -> images. Both latents mapped and truncated by psi; style k reads z_mix's
    w where k >= crossover (num_ws: z alone). Const noise: deterministic. Called with z alone (as
    evaluation calls every generator) it is G in eval mode: no truncation, no mixing. Wraps G, owns
    nothing. The exported program takes all four inputs; its metadata (`style`) says how many styles
    there are and which resolution each drives, for `ganpipe sample --truncation/--mix`."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G
        self.latent = G.latent

    def forward(self, z: torch.Tensor, z_mix: torch.Tensor | None = None, psi: torch.Tensor | None = None,
                crossover: torch.Tensor | None = None) -> torch.Tensor:
        G = self.G
        w = G.mapping(z)
        if psi is not None:
            w = truncate(w, G.w_avg, psi[:, None])
        ws = G.broadcast(w)
        if z_mix is not None:
            w_mix = G.mapping(z_mix)
            w_mix = truncate(w_mix, G.w_avg, psi[:, None]) if psi is not None else w_mix
            n = z.shape[0]
            cross = crossover if crossover is not None else torch.full((n,), G.num_ws, device=z.device)
            ws = mix(ws, G.broadcast(w_mix), cross)
        # clamped as images are shown (and as the official metrics quantise them): an FID of the linear
        # output would score overshoots no reader of the images ever sees
        return G.synthesis(ws, "const").clamp(-1, 1)

    def export_inputs(self, n: int) -> list[tuple]:
        """(name, example, dynamic shape) of the exported program's inputs: n seeded latents, a second
        set for mixing, psi in [0.5, 1], crossovers over every style index (num_ws: no mixing)."""
        g = torch.Generator().manual_seed(0)
        z = self.latent.sample(n, generator=g).z.numpy()
        z_mix = self.latent.sample(n, generator=g).z.numpy()
        psi = (0.5 + 0.5 * torch.rand(n, generator=g)).numpy()
        cross = (torch.arange(n) % (self.G.num_ws + 1)).numpy()
        return [("z", z, (-1, z.shape[1])), ("z_mix", z_mix, (-1, z.shape[1])), ("psi", psi, (-1,)),
                ("crossover", cross, (-1,))]

    def export_meta(self) -> dict:
        return {"style": {"num_ws": self.G.num_ws, "layer_resolutions": self.G.synthesis.style_resolutions(),
                          "inputs": ["z", "z_mix", "psi", "crossover"]}}
