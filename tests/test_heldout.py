"""The held-out evaluator of image-conditioned families: what it scores, how it names the numbers,
what its fingerprint tells apart, and the input | output | target grid."""
import dataclasses

import numpy as np
import pytest
import torch

from gan_core.data import load_prepared, to_float, write_prepared
from gan_core.metrics.heldout import heldout_evaluator
from gan_core.metrics.pixel import l1
from gan_core.models import get_family


def _paired(tmp_path, name="p", heldout=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    b = (255 - a).astype(np.uint8)
    write_prepared(tmp_path / name, a, None, {"kind": "paired", "heldout": heldout}, images_b=b)
    return load_prepared(tmp_path / name), a, b


def test_scores_the_heldout_rows_only_named_with_their_count(tmp_path):
    ds, a, b = _paired(tmp_path)
    fam = get_family("pix2pix")
    ev = heldout_evaluator(fam, fam.options(), ds)
    scores, fp = ev.evaluate(torch.nn.Identity(), 1000, seed=0, batch_size=4)
    # identity "translation": its L1 is the held-out inputs against their targets, computed here directly
    expected = l1(to_float(torch.from_numpy(a[-5:])), to_float(torch.from_numpy(b[-5:])))
    assert scores["l1_5"] == pytest.approx(expected) and scores["l1_identity_5"] == pytest.approx(expected)
    assert ev.count(1000) == 5 and (fp.n_fake, fp.n_real) == (5, 5) and "psnr_5" in scores
    assert ev.evaluate(torch.nn.Identity(), 3, 0, 4)[1].n_fake == 3  # a cheaper tier: the first rows


def test_fingerprint_tells_apart_data_and_settings(tmp_path):
    fam = get_family("pix2pix")
    ds1, _, _ = _paired(tmp_path, "one")
    ds2, _, _ = _paired(tmp_path, "two", seed=1)
    base = heldout_evaluator(fam, fam.options(), ds1).fingerprint(5).id
    assert heldout_evaluator(fam, fam.options(), ds1).fingerprint(5).id == base  # deterministic
    assert heldout_evaluator(fam, fam.options(), ds2).fingerprint(5).id != base  # other held-out data
    other = dataclasses.replace(fam.options(), l1_lambda=1.0)
    assert heldout_evaluator(fam, other, ds1).fingerprint(5).id != base  # other settings
    assert heldout_evaluator(fam, fam.options(), ds1).fingerprint(4).id != base  # other row count


def test_sample_grid_reads_input_output_target(tmp_path):
    ds, a, b = _paired(tmp_path)
    fam = get_family("pix2pix")
    ev = heldout_evaluator(fam, fam.options(), ds)
    class Negate(torch.nn.Module):  # a "generator" whose output is known: the negated input
        def forward(self, x):
            return -x

    images = ev.samples(Negate(), 6, seed=0)
    assert images.shape == (6, 1, 8, 8)  # two triplets
    x, y = to_float(torch.from_numpy(a[-5:])), to_float(torch.from_numpy(b[-5:]))
    for i in range(2):
        assert torch.equal(images[3 * i], x[i]) and torch.equal(images[3 * i + 1], -x[i])
        assert torch.equal(images[3 * i + 2], y[i])


def test_a_dataset_without_heldout_rows_is_refused_by_name(tmp_path):
    a = np.zeros((4, 1, 8, 8), np.uint8)
    write_prepared(tmp_path / "p", a, None, {"kind": "paired", "name": "mine"}, images_b=a)
    fam = get_family("pix2pix")
    with pytest.raises(ValueError, match="mine: manifest.json holds no held-out rows"):
        heldout_evaluator(fam, fam.options(), load_prepared(tmp_path / "p"))


def test_fid_against_the_target_domain_rewards_a_translation_and_not_the_inputs(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, (60, 1, 8, 8), dtype=np.uint8)  # dark inputs
    b = (255 - a).astype(np.uint8)  # bright targets: -x in [-1, 1]
    write_prepared(tmp_path / "p", a, None, {"kind": "paired", "heldout": 20}, images_b=b)
    fam = get_family("pix2pix")
    ev = heldout_evaluator(fam, fam.options(), load_prepared(tmp_path / "p"))

    class Negate(torch.nn.Module):  # the exact translation of this data
        def forward(self, x):
            return -x

    same, _ = ev.evaluate(torch.nn.Identity(), 20, 0, 8)
    assert same["fid_20"] == pytest.approx(same["fid_input_20"])  # changing nothing scores the inputs' FID
    good, _ = ev.evaluate(Negate(), 20, 0, 8)
    assert good["fid_20"] < 0.2 * good["fid_input_20"] and good["fid_input_20"] == pytest.approx(same["fid_input_20"])
