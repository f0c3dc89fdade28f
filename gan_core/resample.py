"""Resampling shared by training, evaluation and the built-in datasets, so a low-resolution input
is made the same way everywhere (super-resolution's LR images, the bicubic baseline)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] -> (N, C, H/scale, W/scale): antialiased bicubic, as the SR
    papers' MATLAB `imresize` (which antialiases when shrinking); clamped back into [-1, 1]."""
    if scale < 1 or images.shape[-1] % scale or images.shape[-2] % scale:
        raise ValueError(f"downsample: {tuple(images.shape[-2:])} is not divisible by scale {scale}")
    h, w = images.shape[-2] // scale, images.shape[-1] // scale
    return F.interpolate(images.float(), size=(h, w), mode="bicubic", align_corners=False,
                         antialias=True).clamp_(-1, 1)


def upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, h*scale, w*scale) bicubic, clamped: the baseline every SR model must beat."""
    return F.interpolate(images.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp_(-1, 1)
