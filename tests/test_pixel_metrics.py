"""Pixel metrics (gan_core/metrics/pixel.py) against closed forms and scikit-image.

Expected values are computed here from the formulas (0..255 scale: v255 = (v + 1) * 127.5), never taken
from the code under test.
"""
import math

import numpy as np
import pytest
import torch

from gan_core.metrics.pixel import l1, psnr, rgb_to_y, ssim

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def units(d255: float) -> float:
    """A difference of d255 on the 0..255 scale, in [-1, 1] units."""
    return d255 / 127.5


def rand_images(n=2, c=3, h=16, w=16, seed=0, lo=-0.8, hi=0.8):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(n, c, h, w, generator=g, dtype=torch.float64))


# ---------------------------------------------------------------- PSNR
def test_psnr_of_constant_offset():
    x = rand_images()
    for d in (1.0, 10.0, 40.0):
        assert psnr(x, x + units(d)) == pytest.approx(20 * math.log10(255 / d), rel=1e-9)
        assert psnr(x + units(d), x) == pytest.approx(20 * math.log10(255 / d), rel=1e-9)


def test_psnr_of_known_mse_float32_inputs():
    # 4 of 256 pixels of one channel of 3 differ by 30: MSE = 4 * 30^2 / (3 * 256).
    x = rand_images(n=1, seed=1).float()
    y = x.clone()
    y[0, 1, 0, :4] += units(30.0)
    mse = 4 * 30.0**2 / (3 * 256)
    assert psnr(x, y) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-4)


def test_psnr_averages_per_image_and_caps_identical_at_100db():
    x = rand_images(n=2)
    y = x.clone()
    y[1] += units(5.0)
    # Per-image mean: (cap + PSNR(d=5)) / 2, not the PSNR of the pooled MSE.
    assert psnr(x, y) == pytest.approx((100.0 + 20 * math.log10(255 / 5)) / 2, rel=1e-9)
    assert psnr(x, x) == 100.0
    y[0] += units(2.0)
    expected = (20 * math.log10(255 / 2) + 20 * math.log10(255 / 5)) / 2
    assert psnr(x, y) == pytest.approx(expected, rel=1e-9)


def test_shave_removes_a_corrupted_border_exactly():
    x = rand_images(h=16, w=12)
    y = x + units(8.0)
    y[..., :3, :] = -1.0  # corrupt 3 px at every border
    y[..., -3:, :] = 1.0
    y[..., :, :3] = 1.0
    y[..., :, -3:] = -1.0
    assert psnr(x, y, shave=3) == pytest.approx(20 * math.log10(255 / 8), rel=1e-9)
    assert psnr(x, y, shave=2) < 20 * math.log10(255 / 8) - 1
    # What is left after shaving 3 is 10 x 6, under the 11 px window: SSIM still scores it (smaller window).
    assert ssim(x, y, shave=3) < 1.0


# ---------------------------------------------------------------- luma
def test_rgb_to_y_matches_bt601_by_hand():
    def solid(r, g, b):  # colour given in [0, 1], image in [-1, 1]
        return torch.tensor([r, g, b], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2) * 2 - 1

    cases = {
        (1, 1, 1): 16 + 65.481 + 128.553 + 24.966,  # white: 235
        (0, 0, 0): 16.0,  # black
        (0.5, 0.5, 0.5): 16 + 0.5 * 219.0,  # mid grey: 125.5
        (1, 0, 0): 16 + 65.481,
        (0, 1, 0): 16 + 128.553,
        (0, 0, 1): 16 + 24.966,
    }
    for rgb, y in cases.items():
        out = rgb_to_y(solid(*rgb))
        assert out.shape == (1, 1, 2, 2)
        assert torch.allclose(out, torch.full_like(out, y), atol=1e-9), (rgb, out.flatten()[0].item(), y)
    assert cases[(1, 1, 1)] == pytest.approx(235.0)


def test_y_channel_psnr_closed_form_and_grey_unchanged():
    x = rand_images()
    d = 12.0  # same offset in R, G, B moves Y by d * 219 / 255
    expected = 20 * math.log10(255 / (d * 219 / 255))
    assert psnr(x, x + units(d), y_channel=True) == pytest.approx(expected, rel=1e-9)
    # Colour-only change with zero luma change: Y-PSNR is the cap, RGB-PSNR is not.
    y = x.clone()
    y[:, 0] += units(24.966)
    y[:, 2] -= units(65.481)
    assert psnr(x, y, y_channel=True) == 100.0
    assert psnr(x, y) < 40
    g = rand_images(c=1)
    gy = g + units(7.0)
    assert psnr(g, gy, y_channel=True) == psnr(g, gy)
    assert ssim(g, gy, y_channel=True) == ssim(g, gy)


# ---------------------------------------------------------------- SSIM
def test_ssim_identity_and_symmetry():
    x = rand_images(seed=2)
    y = (x + 0.3 * rand_images(seed=3)).clamp(-1, 1)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)
    assert ssim(x, y) < 0.99


def luminance(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    return (2 * mx * my + C1) / (mx**2 + my**2 + C1)


def test_ssim_constant_images_is_luminance_term_per_channel():
    # Constant channels: mu is the value, sigmas are 0, so SSIM = luminance term; channels are averaged.
    vals = [(-0.5, -0.5), (0.0, 0.2), (0.4, -0.1)]
    x = torch.stack([torch.full((12, 12), a, dtype=torch.float64) for a, _ in vals])[None]
    y = torch.stack([torch.full((12, 12), b, dtype=torch.float64) for _, b in vals])[None]
    per_channel = [luminance(np.array((a + 1) * 127.5), np.array((b + 1) * 127.5)) for a, b in vals]
    assert ssim(x, y) == pytest.approx(float(np.mean(per_channel)), abs=1e-12)


@pytest.mark.parametrize("size", [16, 8, 10])  # 8 and 10 take the smaller-window path (7 and 9)
def test_ssim_of_shifted_ramp_is_luminance_term_at_window_centres(size):
    # x = linear ramp along W. A symmetric window's weighted mean of a linear function is its value at
    # the window centre, and y = x + c has equal variances with cov = var, so the contrast-structure term
    # is exactly 1: SSIM map = luminance(x(centre), x(centre) + c) over the valid centres.
    win = min(11, size) if min(11, size) % 2 else min(11, size) - 1
    half = win // 2
    cols = np.linspace(-0.9, 0.6, size)
    x = torch.tensor(cols).view(1, 1, 1, size).expand(1, 1, size, size).contiguous()
    c = units(20.0)
    centres = (cols[half:size - half] + 1) * 127.5
    expected = luminance(centres, centres + 20.0).mean()
    assert ssim(x, x + c) == pytest.approx(float(expected), abs=1e-10)
    # Sanity that the ramp does not make the check trivial: the map varies across centres.
    assert np.ptp(luminance(centres, centres + 20.0)) > 1e-4


def test_many_images_are_scored_in_chunks_and_averaged_per_image():
    # 40 images (more than one internal chunk), image i offset by d_i: the mean of the per-image values.
    x = rand_images(n=40, c=1, h=12, w=12, seed=8)
    d = torch.linspace(1.0, 40.0, 40, dtype=torch.float64)
    y = x + units(1.0) * d.view(-1, 1, 1, 1)
    assert psnr(x, y) == pytest.approx(float(np.mean([20 * math.log10(255 / v) for v in d.tolist()])), rel=1e-9)
    assert ssim(x, y) == pytest.approx(np.mean([ssim(x[i:i + 1], y[i:i + 1]) for i in range(40)]), abs=1e-12)


def test_ssim_and_psnr_fall_as_noise_grows():
    g = torch.Generator().manual_seed(7)
    x = rand_images(seed=4)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = [ssim(x, x + sd * noise) for sd in (0.02, 0.1, 0.3)]
    p = [psnr(x, x + sd * noise) for sd in (0.02, 0.1, 0.3)]
    assert 1.0 > s[0] > s[1] > s[2]
    assert p[0] > p[1] > p[2]


@pytest.mark.parametrize("c,y_channel", [(3, False), (1, False), (3, True)])
def test_ssim_matches_scikit_image(c, y_channel):
    from skimage.metrics import structural_similarity  # a project dependency: no skip

    x = rand_images(n=3, c=c, h=20, w=17, seed=5)
    y = (x + 0.25 * rand_images(n=3, c=c, h=20, w=17, seed=6, lo=-1, hi=1)).clamp(-1, 1)
    a, b = (x + 1) * 127.5, (y + 1) * 127.5
    if y_channel:  # MATLAB rgb2ycbcr Y, written out here independently of rgb_to_y
        wts = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(1, 3, 1, 1) / 255
        a, b = 16 + (a * wts).sum(1, keepdim=True), 16 + (b * wts).sum(1, keepdim=True)
    ref = np.mean([
        structural_similarity(a[i].numpy(), b[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255)
        for i in range(len(x))
    ])
    assert ssim(x, y, y_channel=y_channel) == pytest.approx(float(ref), abs=1e-6)


# ---------------------------------------------------------------- L1
def test_l1_closed_form():
    x = rand_images()
    y = x.clone()
    y[0] += 0.1
    y[1] -= 0.3
    assert l1(x, y) == pytest.approx(0.2, abs=1e-12)
    assert l1(x, x) == 0.0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [psnr, ssim, l1])
def test_bad_shapes_and_channels_raise_naming_the_argument(fn):
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"x and y.*\(2, 3, 16, 16\).*\(2, 3, 16, 8\)"):
        fn(x, torch.zeros(2, 3, 16, 8))
    with pytest.raises(ValueError, match=r"y: .*\(2, 2, 16, 16\)"):
        fn(x, torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"x: .*\(3, 16, 16\)"):
        fn(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="x: .*float"):
        fn(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="y: .*non-finite"):
        fn(x, bad)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_bad_shave_raises(fn):
    x = torch.zeros(1, 1, 16, 10)
    with pytest.raises(ValueError, match=r"shave: 5 .*\(1, 1, 16, 10\)"):
        fn(x, x, shave=5)
    with pytest.raises(ValueError, match="shave: .*-1"):
        fn(x, x, shave=-1)
    assert fn(x, x, shave=4) == pytest.approx(100.0 if fn is psnr else 1.0)


def test_rgb_to_y_refuses_grey():
    with pytest.raises(ValueError, match=r"x: .*3 channels.*\(1, 1, 4, 4\)"):
        rgb_to_y(torch.zeros(1, 1, 4, 4))
