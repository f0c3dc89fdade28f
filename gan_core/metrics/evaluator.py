"""The evaluator of a prepared dataset: its backbone and reference statistics, built once at prepare
time inside the dataset folder (so they are versioned with it) and loaded by every evaluation.

    <prepared>/backbones/domain-classifier.pt         weights-only backbone file
    <prepared>/backbones/domain-classifier.json       weights sha256, held-out accuracy
    <prepared>/ref_stats/domain-classifier/           mu.npy, sigma.npy, stats.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan_core.checkpoint import torch_bytes, write_bytes_atomic
from gan_core.data import DataError, to_float
from gan_core.metrics.backbone import (BACKBONE_ID, DomainClassifier, backbone_from_dict, backbone_to_dict, extract,
                                       train_classifier, weights_sha256)
from gan_core.metrics.fid import Fingerprint, ReferenceStats, generate, load_reference, metric_name, save_reference
from gan_core.metrics.frechet import MetricError, feature_stats, fid_from_stats
from gan_core.metrics.inception_score import inception_score, softmax
from gan_core.metrics.kid import kernel_inception_distance
from gan_core.metrics.precision_recall import precision_recall

BACKBONES = (BACKBONE_ID,)


def build_evaluator(folder: Path, images: np.ndarray, labels: np.ndarray | None, manifest: dict,
                    seed: int = 0) -> dict:
    """Train the domain classifier on (images, labels) and store it with the real-data reference stats."""
    if labels is None:
        raise DataError(f"{manifest['name']}: the {BACKBONE_ID} FID backbone is trained on labels, and this "
                        "dataset has none; add it as a labelled dataset")
    model, acc = train_classifier(images, labels, int(labels.max()) + 1, seed=seed)
    digest = weights_sha256(model)
    write_bytes_atomic(folder / "backbones" / f"{BACKBONE_ID}.pt", torch_bytes(backbone_to_dict(model)))
    info = {"backbone": BACKBONE_ID, "weights_sha256": digest, "heldout_accuracy": round(acc, 4), "seed": seed}
    (folder / "backbones" / f"{BACKBONE_ID}.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    feats, _ = extract(model, to_float(torch.from_numpy(images)))
    ref = ReferenceStats(feature_stats(feats), feats.astype(np.float32), BACKBONE_ID, digest, manifest["content_sha256"])
    save_reference(folder / "ref_stats" / BACKBONE_ID, ref)
    return info


@dataclass(frozen=True)
class Evaluator:
    backbone: DomainClassifier
    ref: ReferenceStats
    resolution: int

    def fingerprint(self, n_fake: int) -> Fingerprint:
        return Fingerprint(backbone=self.ref.backbone, weights_sha256=self.ref.weights_sha256, resize="none",
                           image_range="[-1,1]", n_real=self.ref.stats.n, n_fake=n_fake,
                           ref_stats_sha256=self.ref.sha256)

    def evaluate(self, G: nn.Module, n_fake: int, seed: int, batch_size: int,
                 device: torch.device | str = "cpu") -> tuple[dict[str, float], Fingerprint]:
        """Every metric of G's n_fake samples (seeded latents) from one generation and one backbone
        pass: FID against the reference statistics, KID and precision/recall against the reference
        features, Inception Score from the backbone's class probabilities. Keys carry n (fid_2k)."""
        images = generate(G, n_fake, seed, batch_size, device)
        if images.shape[-1] != self.resolution:
            raise MetricError(f"generator makes {tuple(images.shape[1:])} images; the reference statistics "
                              f"are for {self.resolution}x{self.resolution}")
        feats, logits = extract(self.backbone, images, batch_size)
        real = self.ref.features.astype(np.float64)
        kid, kid_std = kernel_inception_distance(real, feats, seed=seed)
        is_mean, is_std = inception_score(softmax(logits), splits=min(10, n_fake))
        precision, recall = precision_recall(real, feats)
        name = lambda prefix: metric_name(n_fake, prefix)  # noqa: E731
        metrics = {name("fid"): fid_from_stats(feature_stats(feats), self.ref.stats),
                   name("kid"): kid, name("kid") + "_std": kid_std, name("is"): is_mean, name("is") + "_std": is_std,
                   name("precision"): precision, name("recall"): recall}
        return metrics, self.fingerprint(n_fake)


def load_evaluator(folder: Path, manifest: dict, backbone: str = BACKBONE_ID) -> Evaluator:
    if backbone not in BACKBONES:
        raise MetricError(f"eval.backbone: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
    path = folder / "backbones" / f"{backbone}.pt"
    if not path.is_file():
        raise MetricError(f"{path}: missing; run the prepare stage")
    model = backbone_from_dict(torch.load(path, map_location="cpu", weights_only=True))
    ref = load_reference(folder / "ref_stats" / backbone, manifest["content_sha256"])
    if weights_sha256(model) != ref.weights_sha256:
        raise MetricError(f"{path}: weights differ from those the reference statistics were computed with")
    return Evaluator(model, ref, int(manifest["shape"][-1]))
