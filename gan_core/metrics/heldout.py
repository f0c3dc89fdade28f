"""Evaluation of image-conditioned families (translation, super-resolution) on held-out rows.

The generator reads held-out inputs (edges, domain A, low-resolution images) and its outputs are
scored against the held-out targets by the family's own `score` (PSNR, SSIM, L1, cycle error, ...),
and as a distribution against the target domain: FID of the outputs against the target domain's
training rows (`fid`), beside the FID of the untranslated inputs (`fid_input`: the inputs as they
are, or bicubic-upscaled for super-resolution), which a translation must beat. No download and no
labels are needed, so the features are those of a fixed seeded random conv net (the content-loss
fallback, `random-conv-s0`, mean and std of its last maps): a weaker backbone than Inception,
named in the fingerprint, so its numbers are only ever compared with each other.
The fingerprint names the held-out data and the family's settings (a PSNR with another border
shave or scale is another number), so the champion gate compares only like with like. It has the
same surface as the noise families' Evaluator (`evaluate`, `samples`, `fingerprint`), so the
monitor, the evaluate stage and the CLI drive both alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gan_core.files import canonical_json
from gan_core.data import PreparedDataset, heldout_arrays, to_float
from gan_core.family import Family
from gan_core.metrics.fid import Fingerprint, metric_name
from gan_core.inference import run_batched, set_mode
from gan_core.metrics.features import state_sha256
from gan_core.metrics.frechet import FeatureStats, MetricError, feature_stats, fid_from_stats
from gan_core.resample import upsample


def translate(family: Family, module: nn.Module, inputs: torch.Tensor, direction: int = 0,
              batch_size: int = 256) -> torch.Tensor:
    """The inference module's outputs for `inputs`; families with several directions (CycleGAN)
    take the direction (0 = the first, a2b) as a second input."""
    return run_batched(module, inputs, direction if family.directions else None, batch_size)


@dataclass(frozen=True)
class HeldoutEvaluator:
    family: Family
    options: Any
    inputs: torch.Tensor  # (n, C, h, w) float in [-1, 1]: what G reads
    targets: torch.Tensor | None  # (n, C, H, W): what it should produce, where known
    digest: str  # sha256 of the held-out data, the family's settings and the FID reference
    reference: FeatureStats | None = None  # features of the target domain's training rows
    columns: int = 6  # sample grids: two input | output | target triplets a row

    def count(self, n: int) -> int:
        """How many held-out rows an evaluation of n scores."""
        return min(n, len(self.inputs))

    def fingerprint(self, n: int) -> Fingerprint:
        return Fingerprint(backbone=f"heldout-{self.family.name}", weights_sha256="none", resize="none",
                           image_range="[-1,1]", n_real=n, n_fake=n, ref_stats_sha256=self.digest)

    def evaluate(self, module: nn.Module, n: int, seed: int, batch_size: int,
                 device: torch.device | str = "cpu") -> tuple[dict[str, float], Fingerprint]:
        """The family's scores on the first n held-out rows (all of them when n is larger), named
        with the row count like FID's sample count (psnr_200). `seed` fixes any randomness G has."""
        n = min(n, len(self.inputs))
        x, y = self.inputs[:n], None if self.targets is None else self.targets[:n]
        was_training = getattr(module, "training", False)
        set_mode(module, False)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                raw = self.family.score(module, x, y, self.options)
        finally:
            set_mode(module, was_training)
        if self.reference is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                raw.update(self.fids(module, x, batch_size))
        scores = {metric_name(n, k): float(v) for k, v in raw.items()}
        gate = metric_name(n, self.family.gate.metric)
        if gate not in scores:
            raise MetricError(f"{self.family.name}: its score gave no {self.family.gate.metric!r} (the gate metric)")
        return scores, self.fingerprint(n)

    def fids(self, module: nn.Module, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """FID of G's outputs, and of the untranslated inputs, against the target domain."""
        out = translate(self.family, module, x, batch_size=batch_size)
        if not torch.isfinite(out).all():
            raise MetricError("translated images contain NaN/Inf")
        shown = x if x.shape[-2:] == out.shape[-2:] else upsample(x, out.shape[-1] // x.shape[-1])
        return {"fid": fid_from_stats(feature_stats(target_features(out)), self.reference),
                "fid_input": fid_from_stats(feature_stats(target_features(_as_channels(shown, out.shape[1]))),
                                            self.reference)}

    def samples(self, module: nn.Module, k: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        """Triplets input | output | target (input upscaled to the output size, a blank target where
        none is known) for the first k // 3 held-out rows: a grid of `columns` reads them in order."""
        x = self.inputs[:max(1, k // 3)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = translate(self.family, module, x, batch_size=batch_size).clamp(-1, 1)
        size = tuple(out.shape[-2:])
        shown_in = torch.nn.functional.interpolate(x, size=size, mode="nearest") if x.shape[-2:] != size else x
        target = self.targets[:len(x)] if self.targets is not None else torch.full_like(out, -1.0)
        return torch.stack([_as_channels(shown_in, out.shape[1]), out, target], dim=1).flatten(0, 1)


def _as_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    return x.expand(-1, c, -1, -1) if x.shape[1] == 1 and c == 3 else x


FID_BACKBONE = "random-conv-s0"  # features.FALLBACK: seeded, label-free, nothing to download


@torch.no_grad()
def target_features(images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, 128): mean and std over space of the random conv net's last maps."""
    net = _backbone()
    out = []
    for i in range(0, len(images), batch_size):
        maps = net(images[i:i + batch_size].float())
        out.append(torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3))], dim=1))
    return torch.cat(out).double().numpy()


_NET: list = []


def _backbone() -> nn.Module:
    if not _NET:
        from gan_core.metrics.features import random_conv

        _NET.append(random_conv())
    return _NET[0]


def target_rows(data: PreparedDataset) -> np.ndarray:
    """The target domain's training rows: the second domain, or the HR images of super-resolution."""
    rows = data.images_b if data.images_b is not None else data.images
    return rows[:len(rows) - data.heldout]


def heldout_evaluator(family: Family, options: Any, data: PreparedDataset) -> HeldoutEvaluator:
    """The evaluator of an image-conditioned family on a prepared dataset's held-out rows."""
    a, b = heldout_arrays(data)
    fa = to_float(torch.from_numpy(a))
    fb = to_float(torch.from_numpy(b)) if b is not None else None
    inputs, targets = family.heldout(fa, fb, options)
    target = target_rows(data)
    reference = feature_stats(target_features(to_float(torch.from_numpy(target)))) if len(target) >= 2 else None
    h = hashlib.sha256()
    for t in (a, b, target):
        if t is not None:
            h.update(t.tobytes())
    h.update(canonical_json({"family": family.name, "options": dataclasses.asdict(options) if options else {},
                             "metrics": sorted(family.metrics), "fid_backbone": FID_BACKBONE,
                             "fid_weights": state_sha256(_backbone())}).encode())
    return HeldoutEvaluator(family, options, inputs, targets, h.hexdigest(), reference)
