"""Text alignment of a text-to-image generator: does the image show what its caption asked for?

An attribute classifier (one head per attribute of gan_core.captions.ATTRIBUTES: colour, shape, size,
position) is trained deterministically on the real training images' attributes, and versioned like the
FID backbone: identified by the sha256 of its weights, stored with the prepared dataset. The score of
a set of generated images is the mean, over images, of the fraction of the attributes their caption
states that the classifier reads off the image; chance is the same mean of 1 / (values of the
attribute). Datasets without attributes get FID only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_core.captions import ATTRIBUTES
from gan_core.data import to_float
from gan_core.metrics.backbone import weights_sha256

CLASSIFIER_ID = "attribute-classifier"
SIZES = tuple(len(v) for v in ATTRIBUTES.values())


class AttributeClassifier(nn.Module):
    """(B, C, R, R) in [-1, 1] -> a list of logits, one (B, values) per attribute. A conv body that
    keeps a 4x4 map before the heads: position is a where, so it is not pooled away."""

    def __init__(self, channels: int, sizes: tuple[int, ...] = SIZES, width: int = 32):
        super().__init__()
        self.channels, self.sizes, self.width = channels, tuple(sizes), width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(32 * width, 128), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(128, k) for k in self.sizes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.body(x)
        return [head(h) for head in self.heads]


def train_attributes(images: np.ndarray, attributes: np.ndarray, seed: int = 0, epochs: int = 8,
                     batch_size: int = 64, lr: float = 2e-3) -> tuple[AttributeClassifier, float]:
    """Seeded and deterministic on the CPU: uint8 NCHW images and (N, A) attribute indices -> the
    classifier (eval mode, frozen) and its mean per-attribute accuracy on a held-out 10% split."""
    g = torch.Generator().manual_seed(seed)
    x, y = to_float(torch.from_numpy(images)), torch.from_numpy(attributes).long()
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    sizes = tuple(int(max(k, m + 1)) for k, m in zip(SIZES, attributes.max(0)))
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is not moved by training here
        torch.manual_seed(seed)
        model = AttributeClassifier(images.shape[1], sizes)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            model.train()
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                logits = model(x[idx])
                loss = sum(F.cross_entropy(lg, y[idx, a]) for a, lg in enumerate(logits))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval().requires_grad_(False)
    acc = float(np.mean(accuracy(model, x[val], y[val])))
    return model, acc


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N, C, R, R) float in [-1, 1] -> (N, A) int64 attribute indices the classifier reads."""
    out = [torch.stack([lg.argmax(1) for lg in model(images[i:i + batch_size].float().cpu())], 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def accuracy(model: AttributeClassifier, images: torch.Tensor, attributes: torch.Tensor) -> list[float]:
    pred = predict(model, images)
    return (pred == attributes).float().mean(0).tolist()


def alignment(model: AttributeClassifier, images: torch.Tensor, wanted: np.ndarray | torch.Tensor) -> float:
    """Mean over images of the fraction of stated attributes (wanted >= 0; -1: not stated) the
    classifier reads off the image; images whose caption states nothing are left out."""
    wanted = torch.as_tensor(np.asarray(wanted), dtype=torch.long)
    stated = wanted >= 0
    hit = (predict(model, images) == wanted) & stated
    rows = stated.sum(1) > 0
    if not rows.any():
        raise ValueError("alignment: no caption states an attribute")
    return float((hit.sum(1)[rows].float() / stated.sum(1)[rows].float()).mean())


def chance(wanted: np.ndarray, sizes: tuple[int, ...] = SIZES) -> float:
    """What a generator ignoring the text scores on these captions (uniform over each attribute's values)."""
    wanted = np.asarray(wanted)
    stated = wanted >= 0
    per = stated / np.asarray(sizes, dtype=float)
    rows = stated.sum(1) > 0
    return float((per.sum(1)[rows] / stated.sum(1)[rows]).mean())


def to_dict(model: AttributeClassifier) -> dict:
    return {"classifier": CLASSIFIER_ID, "channels": model.channels, "sizes": list(model.sizes),
            "width": model.width, "state_dict": model.state_dict()}


def from_dict(d: dict) -> AttributeClassifier:
    if d.get("classifier") != CLASSIFIER_ID:
        raise ValueError(f"attribute classifier file holds {d.get('classifier')!r}, expected {CLASSIFIER_ID!r}")
    with torch.random.fork_rng(devices=[]):
        model = AttributeClassifier(d["channels"], tuple(d["sizes"]), d["width"])
    model.load_state_dict(d["state_dict"])
    return model.eval().requires_grad_(False)


def classifier_sha256(model: AttributeClassifier) -> str:
    return weights_sha256(model)


# ---- the versioned evaluator of a captioned dataset ----------------------------------------------------
FILE = "backbones/attribute-classifier"  # .pt (weights only) and .json (hash, accuracy, seed) in the dataset


def fid_labels(attributes: np.ndarray) -> np.ndarray:
    """The FID backbone's classes for data without labels: every attribute combination is a class."""
    return np.unique(attributes, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def build(folder, images: np.ndarray, attributes: np.ndarray, heldout: int, seed: int = 0) -> dict:
    """At prepare time: train the classifier on the training rows (never the held-out ones it scores)
    and store it with the dataset version; returns what the evaluator info records."""
    from pathlib import Path

    from gan_core.blobs import torch_bytes
    from gan_core.files import write_bytes_atomic, write_json_atomic

    keep = len(images) - heldout
    model, acc = train_attributes(images[:keep], attributes[:keep], seed=seed)
    folder = Path(folder)
    write_bytes_atomic(folder / f"{FILE}.pt", torch_bytes(to_dict(model)))
    info = {"weights_sha256": classifier_sha256(model), "heldout_accuracy": round(acc, 4), "seed": seed}
    write_json_atomic(folder / f"{FILE}.json", info)
    return {CLASSIFIER_ID: info}


class TextEvaluator:
    """Scores a text-conditioned G on the held-out captions: sample i reads held-out row i % H's
    caption (i // H) % (its captions) and z from the seed's own stream; FID (and the shared set) of
    those images with the dataset's backbone, plus `alignment` where the dataset has attributes."""

    def __init__(self, base, held, classifier: AttributeClassifier | None):
        self.base, self.held, self.classifier = base, held, classifier
        self.columns = 0

    def count(self, n: int) -> int:
        return n

    def fingerprint(self, n_fake: int):
        from dataclasses import replace

        fp = self.base.fingerprint(n_fake)
        if self.classifier is None:
            return fp
        return replace(fp, backbone=f"{fp.backbone}+{CLASSIFIER_ID}",
                       weights_sha256=f"{fp.weights_sha256}+{classifier_sha256(self.classifier)}")

    def captions(self, n: int) -> tuple[torch.Tensor, list[int], list[int]]:
        h = len(self.held.captions)
        rows = [i % h for i in range(n)]
        ks = [(i // h) % max(1, int(self.held.counts[r])) for i, r in enumerate(rows)]
        return torch.from_numpy(self.held.captions[rows, ks]), rows, ks

    def generate(self, G, n: int, seed: int, batch_size: int) -> torch.Tensor:
        from gan_core.metrics.frechet import MetricError

        out = self.raw(G, n, seed, batch_size)
        if not torch.isfinite(out).all():
            raise MetricError("generated images contain NaN/Inf")
        return out

    @torch.no_grad()
    def raw(self, G, n: int, seed: int, batch_size: int) -> torch.Tensor:
        """G's images for the first n held-out captions, without the finiteness check."""
        from gan_core.inference import set_mode

        tokens, _, _ = self.captions(n)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, G.latent.z_dim, generator=g)
        was = getattr(G, "training", False)
        set_mode(G, False)
        try:
            out = torch.cat([G(t, zz).float().cpu() for t, zz in zip(tokens.split(batch_size), z.split(batch_size))])
        finally:
            set_mode(G, was)
        return out

    def wanted(self, n: int) -> np.ndarray:
        from gan_core.captions import parse

        _, rows, ks = self.captions(n)
        return np.stack([parse(self.held.texts[r][k]) for r, k in zip(rows, ks)])

    def evaluate(self, G, n_fake: int, seed: int, batch_size: int, device="cpu"):
        from gan_core.metrics.fid import metric_name

        images = self.generate(G, n_fake, seed, batch_size)
        scores, _ = self.base.score_images(images, batch_size, seed)
        if self.classifier is not None:
            wanted = self.wanted(n_fake)
            scores[metric_name(n_fake, "alignment")] = alignment(self.classifier, images, wanted)
            scores[metric_name(n_fake, "alignment") + "_chance"] = chance(wanted, self.classifier.sizes)
        return scores, self.fingerprint(n_fake)

    def samples(self, G, k: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        return self.generate(G, k, seed, batch_size)


def text_evaluator(base, folder) -> TextEvaluator:
    """The evaluator of a text-conditioned family on a prepared captioned dataset (`base`: the FID one)."""
    from pathlib import Path

    from gan_core.data import heldout_captions, load_prepared
    from gan_core.metrics.frechet import MetricError

    held = heldout_captions(load_prepared(folder))
    path = Path(folder) / f"{FILE}.pt"
    classifier = None
    if held.attributes is not None:
        if not path.is_file():
            raise MetricError(f"{path}: missing; run the prepare stage (a captioned dataset with attributes "
                              "stores its attribute classifier)")
        classifier = from_dict(torch.load(path, map_location="cpu", weights_only=True))
    return TextEvaluator(base, held, classifier)
