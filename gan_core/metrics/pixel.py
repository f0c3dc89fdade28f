"""Pixel metrics for image -> image families: PSNR, SSIM, L1 (the super-resolution papers' conventions).

Inputs are float tensors (N, C, H, W) in [-1, 1] with C = 1 or 3; x is the output, y the reference.
PSNR and SSIM are scored on the 0..255 scale (v255 = (v + 1) * 127.5, not rounded to integers) per image,
then averaged over the N images, as the SR papers report them. All maths runs in float64 so that float32
rounding of the inputs cannot move a score.

Policies (part of what a reported number means):
- PSNR of identical images is +inf; each image's PSNR is capped at PSNR_CAP_DB = 100 dB before averaging,
  so a mean stays finite (logs and JSON carry it) and one perfect image cannot hide the others.
- SSIM uses the 11x11 Gaussian window (sigma 1.5) over the valid region (no padding). An image smaller
  than 11 px on a side (after shave) uses the largest odd window that fits, the same Gaussian truncated
  and renormalised: tiny test images still get a score, but it is not comparable with 11x11 scores.
- y_channel=True scores RGB on BT.601 luma Y (MATLAB rgb2ycbcr, range 16..235) with L = 255 kept, as the
  SR papers do; grey (C = 1) images are scored as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_core.metrics.frechet import MetricError  # a ValueError: callers may catch either

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
_CHUNK = 16  # images scored at a time: the float64 copies of a whole held-out set could be GBs
# MATLAB rgb2ycbcr row for Y: Y = 16 + (65.481 R + 128.553 G + 24.966 B), R, G, B in [0, 1].
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _check_one(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise MetricError(f"{name}: need a float tensor (N, C, H, W), got {type(t).__name__} "
                          f"{getattr(t, 'dtype', '')}")
    if t.dim() != 4 or t.shape[1] not in (1, 3) or t.shape[0] == 0:
        raise MetricError(f"{name}: need shape (N >= 1, C in (1, 3), H, W), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise MetricError(f"{name}: contains non-finite values")


def _check_pair(x: Tensor, y: Tensor, shave: int = 0) -> None:
    _check_one("x", x)
    _check_one("y", y)
    if x.shape != y.shape:
        raise MetricError(f"x and y: shapes differ, x {tuple(x.shape)} vs y {tuple(y.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise MetricError(f"shave: need an int >= 0, got {shave!r}")
    h, w = x.shape[-2:]
    if 2 * shave >= min(h, w):
        raise MetricError(f"shave: {shave} px from each border leaves nothing of images {tuple(x.shape)}")


def _to255(t: Tensor) -> Tensor:
    return (t.to(torch.float64) + 1.0) * (DATA_RANGE / 2)


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma of RGB (N, 3, H, W) in [-1, 1] -> (N, 1, H, W) on the 0..255 scale (16 black, 235 white)."""
    _check_one("x", x)
    if x.shape[1] != 3:
        raise MetricError(f"x: rgb_to_y needs 3 channels, got shape {tuple(x.shape)}")
    rgb01 = (x.to(torch.float64) + 1.0) / 2
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return _Y_OFFSET + (rgb01 * w).sum(dim=1, keepdim=True)


def _prepare(x: Tensor, y: Tensor, y_channel: bool, shave: int) -> tuple[Tensor, Tensor]:
    """float64 images on the 0..255 scale, luma if asked, borders shaved (inputs already checked)."""
    if y_channel and x.shape[1] == 3:
        a, b = rgb_to_y(x), rgb_to_y(y)
    else:
        a, b = _to255(x), _to255(y)
    if shave:
        a, b = a[..., shave:-shave, shave:-shave], b[..., shave:-shave, shave:-shave]
    return a, b


def _mean_per_image(score, x: Tensor, y: Tensor, y_channel: bool, shave: int) -> float:
    """Check once, then score (N,) per image chunk by chunk and average over all N images."""
    _check_pair(x, y, shave)
    parts = [score(*_prepare(xc, yc, y_channel, shave)) for xc, yc in zip(x.split(_CHUNK), y.split(_CHUNK))]
    return float(torch.cat(parts).mean())


def _psnr_per_image(a: Tensor, b: Tensor) -> Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    # mse == 0 gives +inf from the division; the cap turns it into a finite, stated value.
    return (10 * torch.log10(DATA_RANGE**2 / mse)).clamp(max=PSNR_CAP_DB)


def psnr(x: Tensor, y: Tensor, *, y_channel: bool = False, shave: int = 0) -> float:
    """Mean over images of 10 log10(255^2 / MSE) in dB, each capped at PSNR_CAP_DB (identical -> cap)."""
    return _mean_per_image(_psnr_per_image, x, y, y_channel, shave)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    """Normalised separable Gaussian as a 1-D (size,) kernel centred on the middle tap."""
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _window_size(h: int, w: int) -> int:
    """11, or the largest odd size fitting an image smaller than that (see module docstring)."""
    size = min(SSIM_WINDOW, h, w)
    return size if size % 2 else size - 1


def _blur(t: Tensor, g: Tensor) -> Tensor:
    """Valid-region (no padding) separable Gaussian filter of each channel of (N, C, H, W)."""
    c = t.shape[1]
    t = F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) per window,
    C1 = (K1 L)^2, C2 = (K2 L)^2; moments are Gaussian-weighted population moments (E[xy] - mu_x mu_y),
    i.e. skimage's gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.
    Mean over windows, then over channels: (N,)."""
    g = _gaussian_window(_window_size(*a.shape[-2:]), SSIM_SIGMA, a.device)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1)


def ssim(x: Tensor, y: Tensor, *, y_channel: bool = False, shave: int = 0) -> float:
    """Mean over images of SSIM (Wang et al. 2004), per channel then averaged over channels."""
    return _mean_per_image(_ssim_per_image, x, y, y_channel, shave)


def l1(x: Tensor, y: Tensor) -> float:
    """Mean absolute error in the inputs' own [-1, 1] units (the pix2pix L1 term's scale)."""
    _check_pair(x, y)
    return float((x.to(torch.float64) - y.to(torch.float64)).abs().mean())


__all__ = ["PSNR_CAP_DB", "SSIM_WINDOW", "l1", "psnr", "rgb_to_y", "ssim"]
