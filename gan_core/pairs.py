"""Built-in offline datasets for the image-conditioned families (paired, unpaired, super-resolution).

    edges2digits     paired    A = Canny edges of a digit, B = the digit (32x32 grey)
    edges2photos     paired    A = Canny edges of a photo patch, B = the patch (64x64 RGB)
    digits-inverted  unpaired  A = digits, B = inverted digits (255 - x) of OTHER digits; held-out rows aligned
    photo-patches    superres  64x64 RGB patches (HR only: the pipeline derives LR with resample.downsample)

Everything comes from data bundled with scikit-learn (the 1797 8x8 digits) and scikit-image (four
lossless PNG photographs), so nothing is downloaded. Deterministic: fixed seeds, the same bytes on
every call, so the prepared dataset's content hash is stable. The last `heldout` rows are held out of
training (evaluation data for the families' metrics); they are chosen so that no training row shares
a digit or a pixel of a photograph with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from gan_core.data import DataError

KINDS = ("paired", "unpaired", "superres")
SEED = 0

# Canny settings. Thresholds are on the gradient magnitude of the Gaussian-smoothed image in [0, 1]
# (skimage's float defaults, stated so a library default change cannot move the data).
DIGIT_RES, DIGIT_SIGMA = 32, 2.0  # sigma 2 at 32 px: one closed outline per stroke, few spurious dots
PHOTO_SIGMA = 2.0  # on 64 px patches: object outlines and strong texture, not fur or wood grain
LOW, HIGH = 0.1, 0.2
HELDOUT_PER_CLASS = 20  # digits: 20 of each class = 200 of 1797 (11%) held out

# Photographs bundled in scikit-image's wheel (skimage/data). Only the lossless PNGs: a JPEG's decoded
# pixels may differ by a level between decoder versions, which would change the content hash.
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png")
PATCH, STRIDE, JITTER = 64, 32, 8  # 64x64 patches on a 32-px grid, each shifted by up to +-8 px
HELDOUT_FRACTION = 0.25  # the right-most quarter of each photo's width is held out
MIN_EDGES = 0.01  # a patch needs at least 1% edge pixels (41 of 4096) to be kept


@dataclass(frozen=True)
class PairedData:
    kind: str  # "paired" | "unpaired" | "superres"
    images: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8: domain A, or the HR images
    images_b: np.ndarray | None  # same shape as images: paired row i <-> row i; unpaired: independent order
    heldout: int  # the LAST `heldout` rows of images (and images_b) are held out of training
    heldout_aligned: bool  # the held-out rows of A and B are aligned pairs (ground truth for unpaired data)
    domains: tuple[str, str] | None  # names of A and B
    source: str  # what it was derived from and how, for the manifest

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        _check_images("images", self.images)
        if (self.images_b is None) != (self.kind == "superres"):
            raise DataError(f"images_b: {self.kind} data {'has no' if self.kind == 'superres' else 'needs a'} "
                            "second domain")
        if self.images_b is not None:
            _check_images("images_b", self.images_b)
            if self.images_b.shape != self.images.shape:
                raise DataError(f"images_b: shape {self.images_b.shape} differs from images {self.images.shape}")
        if not 0 < self.heldout < len(self.images):
            raise DataError(f"heldout: {self.heldout} must leave rows on both sides of {len(self.images)}")
        if self.kind != "unpaired" and self.heldout_aligned != (self.kind == "paired"):  # fixed by the kind
            raise DataError(f"heldout_aligned: must be {self.kind == 'paired'} for {self.kind} data")


def _check_images(name: str, a: np.ndarray) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
        raise DataError(f"{name}: must be a uint8 numpy array, got {getattr(a, 'dtype', type(a))}")
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] == 3)):
        raise DataError(f"{name}: must be (N, H, W) or (N, H, W, 3), got shape {a.shape}")


# ---- shared pieces --------------------------------------------------------------------------------
def edge_map(grey: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float grey in [0, 1] -> (H, W) uint8 Canny edges: 255 on an edge, 0 elsewhere."""
    from skimage.feature import canny

    return canny(grey, sigma=sigma, low_threshold=LOW, high_threshold=HIGH).astype(np.uint8) * 255


def digits32() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as (1797, 32, 32) uint8 and (1797,) int64 labels: 0..16 ink levels
    -> 0..255 (as flows/data/sources.py), then bicubic up to 32 px so an edge detector has strokes to trace
    (at 8 px every stroke is a pixel or two wide)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    big = [Image.fromarray(im).resize((DIGIT_RES, DIGIT_RES), Image.Resampling.BICUBIC) for im in small]
    return np.stack([np.asarray(im, dtype=np.uint8) for im in big]), d.target.astype(np.int64)


def heldout_split(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) row indices: a seeded permutation, then the first `per_class` rows of each
    class go to heldout, so every class is evaluated; both keep the permutation's order."""
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # position of each row among its class, in `order`
    for c in np.unique(labels):
        members = order[labels[order] == c]
        if len(members) <= per_class:
            raise DataError(f"labels: class {c} has {len(members)} rows, too few to hold out {per_class}")
        rank[members] = np.arange(len(members))
    held = rank[order] < per_class
    return order[~held], order[held]


# ---- digits ---------------------------------------------------------------------------------------
def edges2digits() -> PairedData:
    digits, labels = digits32()
    train, held = heldout_split(labels, HELDOUT_PER_CLASS, SEED)
    b = digits[np.concatenate([train, held])]
    a = np.stack([edge_map(im / 255.0, DIGIT_SIGMA) for im in b])
    return PairedData("paired", a, b, len(held), True, ("edges", "digits"),
                      f"sklearn load_digits 8x8 -> {DIGIT_RES}px bicubic (B); A = skimage canny(sigma={DIGIT_SIGMA}, "
                      f"low={LOW}, high={HIGH}) of B, 255 on edges; {HELDOUT_PER_CLASS} per class held out "
                      f"(seed {SEED})")


def invert(images: np.ndarray) -> np.ndarray:
    """The known A -> B mapping of digits-inverted: 255 - x. A bijection (its own inverse), so a
    cycle-consistent translator has an exact solution in both directions."""
    return 255 - images


def digits_inverted() -> PairedData:
    """Training rows of A and of B come from two disjoint halves of the digits, so no training pair
    exists; the held-out rows are aligned ground truth, B_i = invert(A_i)."""
    digits, labels = digits32()
    train, held = heldout_split(labels, HELDOUT_PER_CLASS, SEED)
    n = len(train) // 2
    a_rows, b_rows = train[0::2][:n], train[1::2][:n]  # alternate rows of a random order: balanced classes
    a = digits[np.concatenate([a_rows, held])]
    b = invert(digits[np.concatenate([b_rows, held])])
    return PairedData("unpaired", a, b, len(held), True, ("digits", "inverted-digits"),
                      f"sklearn load_digits 8x8 -> {DIGIT_RES}px bicubic; B = 255 - x; training A and B from "
                      f"disjoint digits ({n} each); last {len(held)} rows ({HELDOUT_PER_CLASS} per class, seed "
                      f"{SEED}) aligned: B_i = 255 - A_i")


# ---- photographs ----------------------------------------------------------------------------------
def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 from the PNG in scikit-image's wheel, read directly: never skimage's
    downloader, which fetches files missing from the wheel over the network."""
    import skimage.data

    path = Path(skimage.data.data_dir) / name
    if not path.is_file():
        raise DataError(f"{path}: not bundled with this scikit-image; the built-in photo datasets need it "
                        "(install the pinned scikit-image)")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Box:
    photo: str
    y: int
    x: int
    heldout: bool


def _grid(lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    """Patch origins in [lo, hi - PATCH]: a STRIDE grid, each jittered and clipped into range.
    STRIDE > 2 * JITTER, so no two origins coincide."""
    starts = np.arange(lo, hi - PATCH + 1, STRIDE)
    return [int(v) for v in np.clip(starts + rng.integers(-JITTER, JITTER + 1, len(starts)), lo, hi - PATCH)]


def photo_boxes(name: str, height: int, width: int, index: int) -> list[Box]:
    """Patch positions in one photo. Columns [0, cut) give training patches, [cut, width) held-out
    ones: a patch never crosses the cut, so no training patch shares a pixel with a held-out one.
    With only four photos, holding out whole photos would test on an unseen scene and keep a quarter
    of the data; a region of each keeps every scene on both sides. Seeded per photo."""
    rng = np.random.default_rng([SEED, index])
    cut = width - round(width * HELDOUT_FRACTION)
    boxes = []
    for held, (lo, hi) in ((False, (0, cut)), (True, (cut, width))):
        for y in range(0, height - PATCH + 1, STRIDE):
            y = int(np.clip(y + rng.integers(-JITTER, JITTER + 1), 0, height - PATCH))
            boxes += [Box(name, y, x, held) for x in _grid(lo, hi, rng)]
    return boxes


def photo_patch_rows() -> tuple[np.ndarray, np.ndarray, list[Box]]:
    """(N, 64, 64, 3) uint8 patches of all photos, training patches first, their (N, 64, 64) uint8
    edge maps (canny of rgb2gray) and their boxes. Patches with under MIN_EDGES of edge pixels (flat
    sky, wall, out-of-focus background) are dropped: they carry no conditioning for edges2photos
    and no detail for super-resolution."""
    from skimage.color import rgb2gray

    rows = []
    for i, name in enumerate(PHOTOS):
        photo = load_photo(name)
        for box in photo_boxes(name, *photo.shape[:2], i):
            patch = photo[box.y:box.y + PATCH, box.x:box.x + PATCH]
            edges = edge_map(rgb2gray(patch), PHOTO_SIGMA)
            if (edges > 0).mean() >= MIN_EDGES:
                rows.append((box, patch, edges))
    rows.sort(key=lambda r: r[0].heldout)  # stable: training rows first, photo and grid order kept
    return np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows]), [r[0] for r in rows]


def _photo_source() -> str:
    return (f"scikit-image {', '.join(PHOTOS)}: {PATCH}x{PATCH} patches on a {STRIDE}px grid, jitter +-{JITTER} "
            f"(seed {SEED}), kept if >= {MIN_EDGES:.0%} edge pixels; held out: patches inside the right-most "
            f"{HELDOUT_FRACTION:.0%} of each photo's width")


def edges2photos() -> PairedData:
    b, edges, boxes = photo_patch_rows()
    a = np.repeat(edges[..., None], 3, axis=-1)  # RGB like B, so both domains share one shape
    return PairedData("paired", a, b, sum(box.heldout for box in boxes), True, ("edges", "photos"),
                      _photo_source() + f"; A = canny(sigma={PHOTO_SIGMA}, low={LOW}, high={HIGH}) of each "
                      "patch's grey (skimage rgb2gray), 255 on edges, repeated to RGB")


def photo_patches() -> PairedData:
    hr, _, boxes = photo_patch_rows()
    return PairedData("superres", hr, None, sum(box.heldout for box in boxes), False, None,
                      _photo_source() + "; HR only (LR = gan_core.resample.downsample at train time)")


PAIRED_BUILTINS: dict[str, Callable[[], PairedData]] = {
    "edges2digits": edges2digits,
    "edges2photos": edges2photos,
    "digits-inverted": digits_inverted,
    "photo-patches": photo_patches,
}
