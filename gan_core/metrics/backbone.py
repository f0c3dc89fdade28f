"""Offline feature backbone for FID: a small CNN classifier trained on the labelled dataset.

No weights can be downloaded here, so the spine's FID uses a classifier trained during prepare,
versioned with the dataset, and identified by the sha256 of its weights. FIDs computed with it
compare only with FIDs from the same backbone (the evaluator fingerprint enforces that); they are
not comparable with Inception FIDs from papers.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_core.data import to_float

BACKBONE_ID = "domain-classifier"
FEATURE_DIM = 128


class DomainClassifier(nn.Module):
    """(B, C, R, R) in [-1, 1] -> 128-d features -> class logits. Resolution-agnostic (global pool)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(4 * width, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 128), >= 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                     epochs: int = 15, batch_size: int = 64, lr: float = 2e-3) -> tuple[DomainClassifier, float]:
    """Train deterministically (seeded, fixed order per seed) on uint8 NCHW images.
    Returns the model (eval mode) and its accuracy on a held-out 10% split."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = to_float(torch.from_numpy(images))
    y = torch.from_numpy(labels)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    model = DomainClassifier(images.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = x[idx]
            # small random shifts make features depend on shape, not exact pixel position
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
    return model, acc


def backbone_to_dict(model: DomainClassifier) -> dict:
    return {"backbone": BACKBONE_ID, "channels": model.channels, "num_classes": model.num_classes,
            "width": model.width, "state_dict": model.state_dict()}


def backbone_from_dict(d: dict) -> DomainClassifier:
    if d.get("backbone") != BACKBONE_ID:
        raise ValueError(f"backbone file holds {d.get('backbone')!r}, expected {BACKBONE_ID!r}")
    # random init draws from the global RNG; loading must not shift the caller's stream (measured:
    # building the in-training monitor this way changed rank 0's latents and so the trained model)
    with torch.random.fork_rng(devices=[]):
        model = DomainClassifier(d["channels"], d["num_classes"], d["width"])
    model.load_state_dict(d["state_dict"])
    return model.eval().requires_grad_(False)


def weights_sha256(model: nn.Module) -> str:
    """Hash of parameter names, shapes and bytes: identifies the backbone independent of file layout."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        buf = io.BytesIO(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(buf.getvalue())
    return h.hexdigest()


@torch.no_grad()
def extract(model: DomainClassifier, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """One pass: (N, C, R, R) float in [-1, 1] -> (N, 128) features and (N, classes) logits, float64.
    Every metric reads these arrays, so no metric runs the backbone again."""
    device = next(model.parameters()).device  # batches go to the model's device, results come back
    feats = torch.cat([model.features(images[i:i + batch_size].to(device).float())
                       for i in range(0, len(images), batch_size)])
    return feats.double().cpu().numpy(), model.head(feats).double().cpu().numpy()
