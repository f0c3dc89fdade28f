"""Generated datasets with known modes, for tests and demos (`synthetic-<name>` sources).

    blobs    grey, one bright square in one of 4 quadrants (4 classes)
    shapes   8 classes: square, disc, triangle, cross, each in red or blue, at a jittered position

Deterministic for a seed, so the same name always gives the same content hash.
"""
from __future__ import annotations

import numpy as np

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 230)}
SHAPES = ("square", "disc", "triangle", "cross")


def blobs(n: int = 512, res: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 4
    images = rng.integers(0, 30, (n, res, res)).astype(np.uint8)
    h = res // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, r * h:(r + 1) * h, col * h:(col + 1) * h] = 220
    return images, labels


def _mask(shape: str, res: int, cy: float, cx: float, size: float) -> np.ndarray:
    y, x = np.mgrid[0:res, 0:res] + 0.5
    dy, dx = y - cy, x - cx
    if shape == "square":
        return (np.abs(dy) <= size) & (np.abs(dx) <= size)
    if shape == "disc":
        return dy ** 2 + dx ** 2 <= size ** 2
    if shape == "triangle":  # apex up: width grows linearly from the top
        return (dy >= -size) & (dy <= size) & (np.abs(dx) <= (dy + size) / 2)
    if shape == "cross":
        bar = size / 3
        return ((np.abs(dy) <= bar) & (np.abs(dx) <= size)) | ((np.abs(dx) <= bar) & (np.abs(dy) <= size))
    raise ValueError(shape)


def shapes(n: int = 1024, res: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % (len(SHAPES) * len(COLOURS))
    images = np.empty((n, res, res, 3), dtype=np.uint8)
    colours = list(COLOURS.values())
    for i, c in enumerate(labels):
        shape, colour = SHAPES[int(c) % len(SHAPES)], colours[int(c) // len(SHAPES)]
        size = res * rng.uniform(0.22, 0.3)
        cy, cx = res / 2 + rng.uniform(-res / 8, res / 8, size=2)
        img = rng.integers(0, 25, (res, res, 3)).astype(np.uint8)
        img[_mask(shape, res, cy, cx, size)] = colour
        images[i] = img
    return images, labels


SYNTHETIC = {"blobs": blobs, "shapes": shapes}
CLASS_NAMES = {  # label index -> name, so catalogued versions carry readable classes
    "blobs": ("top-left", "top-right", "bottom-left", "bottom-right"),
    "shapes": tuple(f"{colour}-{shape}" for colour in COLOURS for shape in SHAPES),
}
