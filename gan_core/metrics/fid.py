"""FID of a generator against stored reference statistics, with the evaluator fingerprint.

The fingerprint names everything that moves the number: backbone and its weights, resize mode,
image range, n_real, n_fake and the reference statistics. Two FIDs are comparable only when
their fingerprints are equal; the champion gate checks exactly that.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan_core.files import canonical_json
from gan_core.files import write_json_atomic
from gan_core.inference import set_mode
from gan_core.latent import LatentSpec
from gan_core.metrics.frechet import FeatureStats, MetricError


@dataclass(frozen=True)
class Fingerprint:
    backbone: str
    weights_sha256: str
    resize: str  # how images reach the backbone's input size ("none": native resolution)
    image_range: str  # value range fed to the backbone
    n_real: int
    n_fake: int
    ref_stats_sha256: str

    @property
    def id(self) -> str:
        return hashlib.sha256(canonical_json(asdict(self)).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        return cls(**{k: v for k, v in d.items() if k != "id"})


def metric_name(n_fake: int, prefix: str = "fid") -> str:
    """fid_2k for 2000 samples, fid_500 for 500: the sample count is part of the metric."""
    return f"{prefix}_{n_fake // 1000}k" if n_fake % 1000 == 0 else f"{prefix}_{n_fake}"


@dataclass(frozen=True)
class ReferenceStats:
    stats: FeatureStats
    features: np.ndarray  # (n_real, D) float32: KID and precision/recall need samples, not moments
    backbone: str
    weights_sha256: str
    dataset_sha256: str  # content hash of the prepared dataset the stats were computed on

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for a in (self.stats.mu, self.stats.sigma, self.features):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def save_reference(folder: Path, ref: ReferenceStats) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "mu.npy", ref.stats.mu, allow_pickle=False)
    np.save(folder / "sigma.npy", ref.stats.sigma, allow_pickle=False)
    np.save(folder / "features.npy", ref.features, allow_pickle=False)
    meta = {"backbone": ref.backbone, "weights_sha256": ref.weights_sha256, "n": ref.stats.n,
            "dataset_sha256": ref.dataset_sha256, "stats_sha256": ref.sha256}
    write_json_atomic(folder / "stats.json", meta)


def load_reference(folder: Path, dataset_sha256: str) -> ReferenceStats:
    """Load reference stats, refusing ones computed on other data or altered since."""
    meta_path = folder / "stats.json"
    if not meta_path.is_file():
        raise MetricError(f"{meta_path}: missing reference statistics; run the prepare stage")
    meta = json.loads(meta_path.read_text())
    missing = [f for f in ("mu.npy", "sigma.npy", "features.npy") if not (folder / f).is_file()]
    if missing:
        raise MetricError(f"{folder}: missing {', '.join(missing)} (written by an older prepare); re-run prepare")
    if meta["dataset_sha256"] != dataset_sha256:
        raise MetricError(f"{meta_path}: computed on dataset {meta['dataset_sha256'][:12]}, "
                          f"not on this dataset {dataset_sha256[:12]}; re-run prepare")
    stats = FeatureStats(np.load(folder / "mu.npy"), np.load(folder / "sigma.npy"), int(meta["n"]))
    ref = ReferenceStats(stats, np.load(folder / "features.npy"), meta["backbone"], meta["weights_sha256"],
                         meta["dataset_sha256"])
    if ref.sha256 != meta["stats_sha256"]:
        raise MetricError(f"{folder}: mu/sigma/features bytes differ from stats.json (corrupt or edited)")
    return ref


def eval_device(use_gpu: bool) -> torch.device:
    """Where evaluation runs: the training device when training asked for a GPU and this process has one
    (the current CUDA device), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if use_gpu and torch.cuda.is_available() \
        else torch.device("cpu")


def quantised(images: torch.Tensor) -> torch.Tensor:
    """Generated images as the backbone must see them: rounded to 8 bits and back, exactly as saving them
    to PNG and reading them again would (gan_core.data.to_uint8 / to_float), the way pytorch-fid scores
    generated images. Real images are 8-bit already, so both sides of the FID see the same grid of values."""
    from gan_core.data import to_float, to_uint8

    return to_float(to_uint8(images))


def latent_of(G: nn.Module) -> LatentSpec:
    spec = getattr(G, "latent", None)
    if not isinstance(spec, LatentSpec):
        raise MetricError(f"{type(G).__name__} has no LatentSpec `latent` attribute; cannot draw its inputs")
    return spec


@dataclass(frozen=True)
class Samples:
    images: torch.Tensor  # (n, C, R, R) in [-1, 1]
    labels: torch.Tensor | None  # (n,) the class (conditional) or categorical code (InfoGAN) asked for
    kind: str  # "class", "code" or "" (unconditional): what `labels` means


@torch.no_grad()
def draw(G: nn.Module, n: int, seed: int, batch_size: int, device: torch.device | str = "cpu",
         labels: torch.Tensor | None = None) -> Samples:
    """n images from latents drawn with their own seeded generator, so the same G and seed give
    the same images whatever the global RNG state. Classes/codes cycle 0, 1, 2, ... unless given."""
    spec = latent_of(G)
    if labels is None and spec.controls:
        labels = torch.arange(n) % spec.controls
    was_training = G.training
    set_mode(G, False)
    g = torch.Generator().manual_seed(seed)
    out = []
    try:
        for i in range(0, n, batch_size):
            part = None if labels is None else labels[i:i + batch_size]
            lat = spec.sample(min(batch_size, n - i), generator=g, labels=part, device=device)
            out.append(G(*lat.inputs).float().cpu())
    finally:
        set_mode(G, was_training)
    images = torch.cat(out)
    if not torch.isfinite(images).all():
        raise MetricError("generated images contain NaN/Inf")
    kind = "class" if spec.n_classes else "code" if spec.code_cat else ""
    return Samples(images, labels, kind)


def generate(G: nn.Module, n: int, seed: int, batch_size: int, device: torch.device | str = "cpu",
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """draw(...).images: n images (n, C, R, R) in [-1, 1]."""
    return draw(G, n, seed, batch_size, device, labels).images
