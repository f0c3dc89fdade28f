"""Evaluators: a feature backbone plus real-data reference statistics, and every metric from one pass.

Backbones, selected by name (`eval.backbone`):
    domain-classifier   a small CNN trained on the labelled dataset at prepare time (no download;
                        FIDs compare only within it); native resolution, no resize
    inception           the standard FID Inception-v3 (pytorch-fid weights), bilinear resize to 299

Prepare stores, inside the DVC-tracked dataset folder, for each backbone it was asked for:
    <prepared>/backbones/domain-classifier.pt|.json   the trained classifier (weights-only file)
    <prepared>/ref_stats/<backbone>/                  mu.npy, sigma.npy, features.npy, stats.json
Reference statistics are keyed by the dataset's content hash and the backbone's weights hash, so a
changed dataset or backbone can never reuse old ones.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from gan_core.blobs import torch_bytes
from gan_core.data import DataError, to_float
from gan_core.files import file_sha256, write_bytes_atomic, write_json_atomic
from gan_core.metrics import backbone as domain
from gan_core.metrics.controls import control_scores
from gan_core.metrics.fid import (Fingerprint, ReferenceStats, draw, load_reference, metric_name, quantised,
                                  save_reference)
from gan_core.metrics.frechet import MetricError, feature_stats, fid_from_stats
from gan_core.metrics.inception_score import inception_score, softmax
from gan_core.metrics.kid import kernel_inception_distance
from gan_core.metrics.precision_recall import precision_recall

DOMAIN, INCEPTION = "domain-classifier", "inception"
# what the backbone sees: 8-bit images in [-1, 1] (fid.quantised); FIDs of unquantised images ("[-1,1]",
# before) hold under another fingerprint, so the gate never compares the two
IMAGE_RANGE = "[-1,1] 8-bit"
BACKBONES = (DOMAIN, INCEPTION)

Extract = Callable[[torch.Tensor, int], tuple[np.ndarray, np.ndarray]]  # images, batch -> features, logits


@dataclass(frozen=True)
class Backbone:
    name: str  # the config name
    id: str  # what the fingerprint records
    weights_sha256: str
    resize: str  # how images reach the network's input size
    extract: Extract
    module: nn.Module | None = None  # the network `extract` runs, moved to the evaluation device


def domain_backbone(folder: Path) -> Backbone:
    path = folder / "backbones" / f"{DOMAIN}.pt"
    if not path.is_file():
        raise MetricError(f"{path}: missing; run the prepare stage (the {DOMAIN} backbone needs a labelled dataset)")
    model = domain.backbone_from_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Backbone(DOMAIN, domain.BACKBONE_ID, domain.weights_sha256(model), "none",
                    lambda x, b: domain.extract(model, x, b), model)


def inception_backbone(weights: str | Path | None = None) -> Backbone:
    from gan_core.metrics import inception

    path = inception.find_weights(weights)
    model = inception.load_fid_inception(path)
    return Backbone(INCEPTION, inception.BACKBONE_ID, file_sha256(path), "bilinear-299", model.extract, model)


def load_backbone(name: str, folder: Path | None = None) -> Backbone:
    if name == DOMAIN:
        if folder is None:
            raise MetricError(f"the {DOMAIN} backbone lives in a prepared dataset folder; name one")
        return domain_backbone(folder)
    if name == INCEPTION:
        return inception_backbone()
    raise MetricError(f"eval.backbone: unknown backbone {name!r} (known: {', '.join(BACKBONES)})")


def build_evaluator(folder: Path, images: np.ndarray, labels: np.ndarray | None, manifest: dict,
                    backbones: Iterable[str] = (DOMAIN,), seed: int = 0) -> dict:
    """At prepare time: train the domain classifier (labelled data) and store reference statistics
    for each requested backbone. Raises (and so leaves nothing behind) if one cannot be built."""
    wanted = list(dict.fromkeys(backbones))
    info: dict = {}
    if labels is None and (folder / "attributes.npy").is_file():  # captioned data: text-alignment classifier,
        from gan_core.metrics import alignment  # and the FID backbone learns the attribute combinations

        attributes = np.load(folder / "attributes.npy", allow_pickle=False)
        info.update(alignment.build(folder, images, attributes, int(manifest.get("heldout", 0)), seed))
        labels = alignment.fid_labels(attributes)
    if labels is not None:
        model, acc = domain.train_classifier(images, labels, int(labels.max()) + 1, seed=seed)
        write_bytes_atomic(folder / "backbones" / f"{DOMAIN}.pt", torch_bytes(domain.backbone_to_dict(model)))
        info[DOMAIN] = {"weights_sha256": domain.weights_sha256(model), "heldout_accuracy": round(acc, 4), "seed": seed}
        write_json_atomic(folder / "backbones" / f"{DOMAIN}.json", info[DOMAIN])
        wanted = [DOMAIN] + [b for b in wanted if b != DOMAIN]  # the in-training FID uses it
    elif DOMAIN in wanted:
        raise DataError(f"{manifest['name']}: the {DOMAIN} FID backbone is trained on labels, and this dataset "
                        f"has none; add it as a labelled dataset or use eval.backbone={INCEPTION}")
    real = to_float(torch.from_numpy(images))
    for name in wanted:
        bb = load_backbone(name, folder)
        feats, _ = bb.extract(real, 500)
        ref = ReferenceStats(feature_stats(feats), feats.astype(np.float32), bb.id, bb.weights_sha256,
                             manifest["content_sha256"])
        save_reference(folder / "ref_stats" / name, ref)
        info.setdefault(name, {})["ref_stats_sha256"] = ref.sha256
    return info


def score(feats: np.ndarray, logits: np.ndarray, ref: ReferenceStats, n: int, seed: int) -> dict[str, float]:
    """Every metric from one set of generated features/logits: FID against the reference statistics,
    KID and precision/recall against the reference features, IS from the class probabilities."""
    real = ref.features.astype(np.float64)
    kid, kid_std = kernel_inception_distance(real, feats, seed=seed)
    is_mean, is_std = inception_score(softmax(logits), splits=min(10, len(feats)))
    precision, recall = precision_recall(real, feats)
    name = lambda prefix: metric_name(n, prefix)  # noqa: E731
    return {name("fid"): fid_from_stats(feature_stats(feats), ref.stats), name("kid"): kid,
            name("kid") + "_std": kid_std, name("is"): is_mean, name("is") + "_std": is_std,
            name("precision"): precision, name("recall"): recall}


@dataclass(frozen=True)
class Evaluator:
    backbone: Backbone
    ref: ReferenceStats
    resolution: int  # of the reference images
    runs_on_device = True  # evaluate(device=...) runs G and the backbone there (held-out evaluators: CPU only)

    @property
    def columns(self) -> int:
        return 0  # sample grids: square

    def count(self, n: int) -> int:
        """How many samples an evaluation of n scores (all n: latents are unlimited)."""
        return n
    def fingerprint(self, n_fake: int) -> Fingerprint:
        return Fingerprint(backbone=self.backbone.id, weights_sha256=self.backbone.weights_sha256,
                           resize=self.backbone.resize, image_range=IMAGE_RANGE, n_real=self.ref.stats.n,
                           n_fake=n_fake, ref_stats_sha256=self.ref.sha256)

    def score_images(self, images: torch.Tensor, batch_size: int, seed: int,
                     labels: torch.Tensor | None = None, kind: str = "") -> tuple[dict[str, float], Fingerprint]:
        """(N, C, H, W) in [-1, 1] -> metrics (one backbone pass) and the fingerprint they hold under.
        With the labels G was asked for (kind "class" or "code") and the domain classifier, the same
        pass also scores whether G obeyed them (gan_core.metrics.controls)."""
        if self.backbone.resize == "none" and tuple(images.shape[-2:]) != (self.resolution, self.resolution):
            raise MetricError(f"images are {tuple(images.shape[1:])}; the {self.backbone.name} reference statistics "
                              f"are for {self.resolution}x{self.resolution}")
        feats, logits = self.backbone.extract(quantised(images), batch_size)
        scores = score(feats, logits, self.ref, len(images), seed)
        if labels is not None and kind and self.backbone.name == DOMAIN:  # Inception's classes are ImageNet's
            scores.update(control_scores(kind, labels.numpy(), logits, lambda p: metric_name(len(images), p)))
        return scores, self.fingerprint(len(images))

    def evaluate(self, G: nn.Module, n_fake: int, seed: int, batch_size: int,
                 device: torch.device | str = "cpu") -> tuple[dict[str, float], Fingerprint]:
        """Metrics of G's n_fake samples from seeded latents: same G and seed, same numbers. G and the
        backbone run on `device` (G must be there already), in batches of batch_size."""
        if self.backbone.module is not None:
            self.backbone.module.to(device)
        s = draw(G, n_fake, seed, batch_size, device)
        return self.score_images(s.images, batch_size, seed, s.labels, s.kind)

    def samples(self, G: nn.Module, k: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        """k images from seeded latents (the sample grid); the same surface as HeldoutEvaluator's."""
        return draw(G, k, seed, batch_size).images


def load_evaluator(folder: Path, manifest: dict, backbone: str = DOMAIN) -> Evaluator:
    """The evaluator of a prepared dataset for one backbone; refuses stats of other data or weights."""
    if backbone not in BACKBONES:
        raise MetricError(f"eval.backbone: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
    stats_dir = folder / "ref_stats" / backbone
    if not (stats_dir / "stats.json").is_file():
        raise MetricError(f"{stats_dir}: no reference statistics for {backbone}; run prepare with "
                          f"eval.backbone={backbone}")
    bb = load_backbone(backbone, folder)
    ref = load_reference(stats_dir, manifest["content_sha256"])
    if bb.weights_sha256 != ref.weights_sha256:
        raise MetricError(f"{stats_dir}: computed with {backbone} weights {ref.weights_sha256[:12]}, "
                          f"but the backbone now has {bb.weights_sha256[:12]}; re-run prepare")
    return Evaluator(bb, ref, int(manifest["shape"][-1]))


def folder_evaluator(real: torch.Tensor, backbone: Backbone, batch_size: int = 500) -> Evaluator:
    """An evaluator whose reference is a set of real images (folder vs folder evaluation)."""
    feats, _ = backbone.extract(real, batch_size)
    digest = hashlib.sha256(real.numpy().tobytes()).hexdigest()
    ref = ReferenceStats(feature_stats(feats), feats.astype(np.float32), backbone.id, backbone.weights_sha256, digest)
    return Evaluator(backbone, ref, int(real.shape[-1]))


def evaluator_for(family, options, folder: Path, manifest: dict, backbone: str = DOMAIN):
    """What scores a family on a prepared dataset: the held-out evaluator of an image-conditioned
    family (its inputs and targets), else the backbone's reference statistics for noise families."""
    if family.image_input:
        from gan_core.data import load_prepared
        from gan_core.metrics.heldout import heldout_evaluator

        return heldout_evaluator(family, options, load_prepared(folder))
    if family.conditioning == "text":  # held-out captions in, FID and text alignment out
        from gan_core.metrics.alignment import text_evaluator

        return text_evaluator(load_evaluator(folder, manifest, backbone), folder)
    return load_evaluator(folder, manifest, backbone)
