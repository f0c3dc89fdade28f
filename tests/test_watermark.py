"""The invisible watermark (gan_core.watermark) on the images the project writes: bits survive JPEG at
quality 90 and a 10% resize; unmarked images are not reported as marked; too-small images are refused.
Thresholds come from measurements (issue 15 report): over 12 images per size, every bit was read after
JPEG 90 or a 0.9/1.1 resize (worst case 63 of 64 with both at once), with marked scores <= 0.041 and
unmarked >= 0.097 over 1031 readings (threshold PRESENT = 0.07); PSNR ~41 dB (>= 128 px), ~36.5 dB
(64-127 px), ~35 dB (32-63 px)."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from sklearn.datasets import load_digits

from gan_core import watermark as wm
from gan_core.images import make_grid

PAYLOAD = 0x0813BA6D_CB94598E
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _tiles(n: int, side: int, seed: int) -> torch.Tensor:
    """n crops of real photos at side px, in [-1, 1]: a stand-in for generated images with real content."""
    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        im = _photo(PHOTOS[(seed + i) % len(PHOTOS)])
        s = int(rng.integers(side, min(im.size) // 2))
        x, y = (int(rng.integers(0, d - s)) for d in im.size)
        t = np.asarray(im.crop((x, y, x + s, y + s)).resize((side, side), Image.BILINEAR), dtype=np.float32)
        out.append(torch.from_numpy(t.transpose(2, 0, 1) / 127.5 - 1))
    return torch.stack(out)


def _jpeg(a: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def _resize(a: np.ndarray, f: float) -> np.ndarray:
    im = Image.fromarray(a)
    return np.asarray(im.resize((round(im.width * f), round(im.height * f))))  # Pillow's default: bicubic


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / ((a.astype(float) - b.astype(float)) ** 2).mean()))


# what the project writes: `sample` grids of 16 and 32 px images (x4, 1 px padding) and `translate` outputs
SIZES = {"sample n=1 16px (72 px)": (1, 16, 1, 1, 4), "sample n=64 16px (548 px)": (64, 16, 8, 1, 4),
         "sample n=4 32px (268 px)": (4, 32, 2, 1, 4), "translate 32px": (1, 32, 1, 0, 1),
         "translate 64px": (1, 64, 1, 0, 1)}
ATTACKS = {"jpeg90": _jpeg, "resize0.9": lambda a: _resize(a, 0.9), "resize1.1": lambda a: _resize(a, 1.1),
           "jpeg90+resize0.9": lambda a: _resize(_jpeg(a), 0.9)}


@pytest.mark.parametrize("size", SIZES)
def test_bits_survive_jpeg90_and_a_10_percent_resize(size):
    n, side, columns, pad, scale = SIZES[size]
    for seed in range(2):
        grid = make_grid(_tiles(n, side, seed), columns, pad=pad, scale=scale)
        marked = wm.embed(grid, PAYLOAD)
        side_px = min(grid.shape[:2])  # measured: ~41 dB from 128 px, ~36.5 from 64, ~35 at 32
        assert _psnr(grid, marked) > (38 if side_px >= 128 else 35.5 if side_px >= 64 else 33)
        assert wm.detect(marked).payload == PAYLOAD
        for name, attack in ATTACKS.items():
            r = wm.detect(attack(marked))
            allowed = 1 if "+" in name else 0  # measured: 0 errors for one attack, <= 1 of 64 for both
            assert r.present and wm.bit_errors(r.payload, PAYLOAD) <= allowed, (size, name, r)


def _unmarked():
    """Photos (whole and as project-sized grids), digits grids, and grids of an untrained generator."""
    for i, name in enumerate(PHOTOS):
        photo = np.asarray(_photo(name))
        yield photo
        yield make_grid(_tiles(16, 16, i), 4)
        yield make_grid(_tiles(1, 32, i), 1, pad=0, scale=1)
    digits = torch.from_numpy(load_digits().images[:256] / 8.0 - 1).float()[:, None]
    for i in range(0, 256, 64):
        yield make_grid(torch.nn.functional.interpolate(digits[i:i + 64], size=16), 8)
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.ConvTranspose2d(16, 32, 4, 1, 0), torch.nn.ReLU(),
                            torch.nn.ConvTranspose2d(32, 16, 4, 2, 1), torch.nn.ReLU(),
                            torch.nn.ConvTranspose2d(16, 3, 4, 2, 1), torch.nn.Tanh())
    with torch.no_grad():
        for s in range(4):
            yield make_grid(G(torch.randn(16, 16, 1, 1, generator=torch.Generator().manual_seed(s))), 4)
    yield np.zeros((100, 100), np.uint8)
    yield np.full((100, 100, 3), 128, np.uint8)


def test_unmarked_images_are_not_reported_marked():
    scores = []
    for image in _unmarked():
        for attack in (lambda a: a, _jpeg, lambda a: _resize(a, 0.9)):
            r = wm.detect(attack(image))
            assert not r.present, r
            scores.append(r.score)
    assert min(scores) > 0.09  # measured >= 0.097; unmarked projections spread uniformly (mean 0.125)


def test_too_small_images_are_refused():
    with pytest.raises(wm.WatermarkError, match="16x16 px is too small"):
        wm.embed(np.zeros((16, 16, 3), np.uint8), PAYLOAD)
    assert not wm.detect(np.zeros((16, 16), np.uint8)).present
