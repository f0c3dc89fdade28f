"""srgan (gan_core/models/srgan.py) and its content-loss backbones (gan_core/metrics/features.py):
shapes at x2/x4, other LR sizes, each phase's step, an exact resume across the phase boundary,
torch.export with dynamic batch/H/W, option errors, the VGG19 loader and its fallback, and a learning
test (photo patches) against the bicubic baseline.

Measure the learning margins: `.venv/bin/python tests/test_srgan.py 0 1 2` (seeds).
"""
import copy
import io
import sys
import time

import numpy as np
import pytest
import torch

from gan_core.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from gan_core.losses import LOSSES
from gan_core.metrics import features as feats
from gan_core.metrics.frechet import MetricError
from gan_core.models.srgan import (Discriminator, Options, SRResNet, build_discriminator, build_generator, heldout,
                                   score, step)
from gan_core.resample import downsample, upsample
from gan_core.state import TrainState


def make_state(res=16, channels=1, width=8, seed=0, options=Options(scale=2, blocks=2, warmup_steps=0),
               lr=1e-3, betas=(0.9, 0.999)) -> TrainState:
    torch.manual_seed(seed)
    m, d = ModelConfig(g_channels=width, d_channels=width), DataConfig(resolution=res, channels=channels)
    G, D = build_generator(m, d, 0, options), build_discriminator(m, d, 0, options)
    return TrainState(family=None, G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
                      opt_g=torch.optim.Adam(G.parameters(), lr, betas=betas),
                      opt_d=torch.optim.Adam(D.parameters(), lr, betas=betas),
                      loss=LOSSES["nonsat"], device=torch.device("cpu"), options=options)


def hr_batch(n=8, res=16, channels=1, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, channels, res, res), dtype=torch.uint8, generator=g)}


def weights(*models) -> list[torch.Tensor]:
    return [t.detach().clone() for m in models for t in m.state_dict().values()]


def changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.fixture(autouse=True)
def no_vgg_file(monkeypatch, tmp_path):
    """Tests never pick up a real VGG19 file someone has in their cache: "auto" means the fallback."""
    monkeypatch.setenv(feats.VGG19_ENV, str(tmp_path / "absent" / feats.VGG19_FILE))


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("scale, channels", [(2, 1), (4, 3)])
def test_shapes_and_other_lr_sizes(scale, channels):
    o = Options(scale=scale, blocks=2)
    m, d = ModelConfig(g_channels=8, d_channels=8), DataConfig(resolution=16, channels=channels)
    G, D = build_generator(m, d, 0, o).eval(), build_discriminator(m, d, 0, o)
    for h, w in [(16 // scale, 16 // scale), (5, 7)]:  # the training LR size, and a non-square odd one
        out = G(torch.rand(3, channels, h, w) * 2 - 1)
        assert out.shape == (3, channels, scale * h, scale * w) and out.abs().max() <= 1
        assert D(out).shape == (3,)
    assert sum(isinstance(l, torch.nn.PixelShuffle) for l in G.modules()) == {2: 1, 4: 2}[scale]


def test_discriminator_strides_fit_the_hr_size():
    for res, halvings in [(8, 1), (16, 2), (32, 3), (128, 4), (256, 4)]:
        D = Discriminator(1, res, 4)
        strided = [l for l in D.body if isinstance(l, torch.nn.Conv2d) and l.stride == (2, 2)]
        assert len(strided) == halvings
        assert D.body(torch.zeros(1, 1, res, res)).shape[-1] == max(res // 2 ** halvings, 1)


def test_resolution_must_divide_into_a_large_enough_lr():
    m = ModelConfig(g_channels=8, d_channels=8)
    for build in (build_generator, build_discriminator):
        with pytest.raises(ConfigError) as err:
            build(m, DataConfig(resolution=8), 0, Options(scale=4))  # LR would be 2 px
        assert err.value.field == "data.resolution"
    build_generator(m, DataConfig(resolution=8), 0, Options(scale=2))  # LR 4 px is enough
    build_generator(m, DataConfig(resolution=16), 0, Options(scale=4))


@pytest.mark.parametrize("field, value", [("scale", 3), ("scale", True), ("blocks", 0), ("warmup_steps", -2),
                                          ("warmup_steps", 2.5), ("adv_weight", -1e-3),
                                          ("feature_weight", float("nan")), ("features", "vgg16"),
                                          ("gan_lr_g", 0.0)])
def test_options_errors_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        Options(**{field: value})
    assert err.value.field == f"family.{field}"


def test_vgg19_features_without_the_file_is_refused_at_build_time():
    with pytest.raises(ConfigError) as err:
        build_generator(ModelConfig(g_channels=8), DataConfig(resolution=16), 0, Options(features="vgg19"))
    assert err.value.field == "family.features" and feats.VGG19_FILE in str(err.value)


def test_exported_generator_has_dynamic_batch_and_size():
    from torch.export import Dim

    G = SRResNet(3, 8, 2, 4).eval()
    program = torch.export.export(G, (torch.randn(2, 3, 4, 4),),
                                  dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    for shape in [(3, 3, 5, 9), (1, 3, 8, 8)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = program.module()(x)
            assert out.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
            assert torch.allclose(out, G(x), atol=1e-6)


# ---------------------------------------------------------------- the train step
def test_mse_phase_trains_g_on_the_pixel_loss_and_leaves_d_alone():
    # no augmentation: the closed form below scores the batch as given (dihedral has its own test)
    state = make_state(options=Options(scale=2, blocks=2, warmup_steps=1, augment=False))
    batch = hr_batch()
    G0, d_before, g_before = copy.deepcopy(state.G), weights(state.D), weights(state.G)
    out = step(state, [batch], TrainConfig())
    assert state.extra["phase"] == "mse"
    assert out["loss_d"] == 0 and changed(g_before, weights(state.G)) and not changed(d_before, weights(state.D))
    hr = batch["images"].float() / 127.5 - 1
    assert torch.allclose(out["loss_g"], ((G0(downsample(hr, 2)) - hr) ** 2).mean())  # pixel MSE, closed form
    assert "features" not in state.extra  # the MSE phase never loads the backbone


def test_gan_phase_updates_both_and_records_the_backbone():
    state = make_state(options=Options(scale=2, blocks=2, warmup_steps=1))
    state.step = 1  # the loop's count after one step: the next one is the first GAN step
    before_g, before_d, keys = weights(state.G), weights(state.D), list(state.G.state_dict())
    out = step(state, [hr_batch()], TrainConfig())
    assert state.extra["phase"] == "gan" and changed(before_g, weights(state.G)) and changed(before_d, weights(state.D))
    assert {"loss_d", "loss_g", "mse", "feature", "adv"} <= set(out) and all(v.isfinite() for v in out.values())
    assert out["loss_d"] > 0 and out["feature"] > 0
    o = state.options
    assert [g["lr"] for g in state.opt_g.param_groups] == [o.gan_lr_g]  # the GAN phase's own lr for G
    # loss_g is the documented sum of its reported terms
    assert torch.allclose(out["loss_g"], out["mse"] + o.feature_weight * out["feature"] + o.adv_weight * out["adv"])
    _, name, sha = feats.load_features(feats.AUTO)
    assert (state.extra["features"], state.extra["features_sha256"]) == (name, sha) == (feats.FALLBACK, sha)
    assert list(state.G.state_dict()) == keys  # the backbone stays out of G's state dict


def test_resume_across_the_phase_boundary_is_exact():
    """4 steps straight == 2 steps, save/load of everything a checkpoint holds, 2 more (warmup 3:
    the boundary falls after the resume)."""
    opts = Options(scale=2, blocks=2, warmup_steps=3)
    batches = [hr_batch(seed=i) for i in range(4)]

    def run(state, bs):
        for b in bs:
            step(state, [b], TrainConfig())
            state.step += 1  # as the loop does, after the step

    straight = make_state(options=opts)
    torch.manual_seed(123)
    run(straight, batches)

    first = make_state(options=opts)
    torch.manual_seed(123)
    run(first, batches[:2])
    buf = io.BytesIO()
    torch.save({"G": first.G.state_dict(), "D": first.D.state_dict(), "opt_g": first.opt_g.state_dict(),
                "opt_d": first.opt_d.state_dict(), "rng": torch.get_rng_state(), "extra": first.extra,
                "step": first.step}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    resumed = make_state(options=opts, seed=99)  # different init: everything must come from the checkpoint
    resumed.G.load_state_dict(ck["G"]), resumed.D.load_state_dict(ck["D"])
    resumed.opt_g.load_state_dict(ck["opt_g"]), resumed.opt_d.load_state_dict(ck["opt_d"])
    torch.set_rng_state(ck["rng"])
    resumed.extra, resumed.step = dict(ck["extra"]), ck["step"]
    assert resumed.extra["phase"] == "mse"
    run(resumed, batches[2:])
    assert straight.extra == resumed.extra and resumed.extra["phase"] == "gan"
    for a, b in zip(weights(straight.G, straight.D), weights(resumed.G, resumed.D)):
        assert torch.equal(a, b)


def test_resume_refuses_another_backbone():
    state = make_state(options=Options(scale=2, blocks=2, warmup_steps=0))
    state.extra.update(features=feats.VGG19, features_sha256="0" * 64)  # trained with VGG19 elsewhere
    with pytest.raises(RuntimeError, match="vgg19"):
        step(state, [hr_batch()], TrainConfig())


# ---------------------------------------------------------------- evaluation
def test_heldout_and_score_against_closed_forms():
    from gan_core.metrics.pixel import psnr

    hr = torch.rand(6, 3, 16, 16) * 2 - 1
    inputs, targets = heldout(hr, None, Options(scale=2))
    assert torch.equal(inputs, downsample(hr, 2)) and targets is hr
    bicubic = torch.nn.Upsample(scale_factor=2, mode="bicubic")  # a parameter-free "model": the baseline itself
    s = score(bicubic, inputs, targets, Options(scale=2))
    assert s["psnr"] == pytest.approx(s["psnr_bicubic"], abs=1e-4) and s["ssim"] == pytest.approx(s["ssim_bicubic"],
                                                                                                 abs=1e-5)
    assert s["psnr_bicubic"] == pytest.approx(psnr(upsample(inputs, 2), hr, y_channel=True, shave=2))
    identity = SRResNet(3, 4, 1, 2).eval()
    worse = score(identity, inputs, targets, Options(scale=2))  # an untrained G is far from bicubic
    assert worse["psnr"] < s["psnr_bicubic"] and set(worse) == set(s)


# ---------------------------------------------------------------- content-loss backbones
def test_vgg19_loader_reads_torchvision_keys(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = feats.VGG19Features()
    state = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in ref.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file has a classifier: ignored
    path = tmp_path / feats.VGG19_FILE
    torch.save(state, path)
    monkeypatch.setenv(feats.VGG19_ENV, str(path))
    model, name, sha = feats.load_features(feats.AUTO)
    assert name == feats.VGG19 and sha == feats.file_sha256(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    # closed form: the same convs applied by hand to the normalised RGB image, through relu5_4, / 12.75
    h = ((x + 1) / 2).repeat(1, 3, 1, 1)
    h = (h - torch.tensor(feats.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(feats.IMAGENET_STD).view(1, 3, 1, 1)
    i = 0
    for v in feats.VGG19_CFG:
        if v == "M":
            h, i = torch.nn.functional.max_pool2d(h, 2), i + 1
        else:
            h = torch.relu(torch.nn.functional.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"],
                                                      padding=1))
            i += 2
    assert i == 36 and torch.allclose(model(x), h / 12.75, atol=1e-5)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 512, 2, 2)  # small inputs are upscaled to 32 first


def test_missing_vgg19_file_falls_back_to_the_seeded_random_backbone():
    a, name, sha = feats.load_features(feats.AUTO)
    b, _, sha_b = feats.load_features(feats.FALLBACK)
    assert name == feats.FALLBACK and sha == sha_b == feats.state_sha256(b)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(a(x), b(x)) and a(x).abs().sum() > 0  # the seed fixes the weights
    rng = torch.get_rng_state()
    feats.load_features(feats.FALLBACK)
    assert torch.equal(rng, torch.get_rng_state())  # building it leaves the caller's RNG alone
    with pytest.raises(MetricError, match=feats.VGG19_FILE):
        feats.load_features(feats.VGG19)


@pytest.mark.parametrize("content", ["garbage", "wrong_keys", "wrong_shape"])
def test_wrong_vgg19_file_names_the_path(tmp_path, monkeypatch, content):
    path = tmp_path / "my-vgg.pth"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        state = {f"features.{k}": v for k, v in feats.VGG19Features().features.state_dict().items()}
        if content == "wrong_keys":
            state = {k.replace("features.", "body."): v for k, v in state.items()}
        else:
            state["features.34.weight"] = torch.zeros(512, 256, 3, 3)
        torch.save(state, path)
    monkeypatch.setenv(feats.VGG19_ENV, str(path))
    with pytest.raises(MetricError) as err:
        feats.load_features(feats.AUTO)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- learning
def photo_patches(res=16, n_train=2048, min_detail=0.02, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 grey HR patches of sklearn's bundled photos (china.jpg, flower.jpg), halved first (less JPEG
    noise, more detail per patch). Each photo is cut into 2res x 2res blocks, a third of them (a
    diagonal pattern) held out: train = random crops inside the other blocks, test = the res x res
    tiles of the held-out ones, so both sample the same scenes and no test pixel is trained on.
    Only patches with detail beyond what an LR image holds: RMS of patch - its x2 bicubic round trip
    >= min_detail ([-1, 1] units; about PSNR <= 40 dB). Sky, blurred background and smooth gradients
    come back at 45-52 dB from bicubic, and one of them outweighs ten textured patches in a mean PSNR."""
    from sklearn.datasets import load_sample_images

    def detailed(p: torch.Tensor) -> bool:
        x = p[None].float() / 127.5 - 1
        return float((x - upsample(downsample(x, 2), 2)).pow(2).mean().sqrt()) >= min_detail

    rng, b = np.random.default_rng(seed), 2 * res
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # BT.601 weights
    train, test = [], []
    for k, img in enumerate(load_sample_images().images):
        t = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() * luma).sum(0)[None, None]
        t = torch.nn.functional.interpolate(t, scale_factor=0.5, mode="bicubic", antialias=True)
        t = t.clamp(0, 255).round().to(torch.uint8)[0]  # (1, 213, 320)
        blocks = [(i, j) for i in range(t.shape[1] // b) for j in range(t.shape[2] // b)]
        held = [(i, j) for i, j in blocks if (i + j) % 3 == 0]
        fit = [(i, j) for i, j in blocks if (i + j) % 3]
        test += [p for i, j in held for y in (0, res) for x in (0, res)
                 if detailed(p := t[:, i * b + y:i * b + y + res, j * b + x:j * b + x + res])]
        while len(train) < n_train // 2 * (k + 1):
            i, j = fit[rng.integers(len(fit))]
            y, x = i * b + rng.integers(0, res + 1), j * b + rng.integers(0, res + 1)
            if detailed(p := t[:, y:y + res, x:x + res]):
                train.append(p)
    return torch.stack(train), torch.stack(test)


def learn(seed: int, steps: int, warmup: int, res=16, scale=2, batch=32, width=32, blocks=4, lr=2e-3):
    """Train as the loop does (step, step count, G_ema at the loop's default decay) and score G_ema on
    the held-out patches when the MSE phase ends and, if later, at the end; and the mean time per step."""
    from gan_core.train import ema_update

    torch.manual_seed(seed)
    train, test = photo_patches(res, seed=seed)
    opts, t = Options(scale=scale, blocks=blocks, warmup_steps=warmup), TrainConfig()
    state = make_state(res=res, channels=1, width=width, seed=seed, options=opts, lr=lr)
    g = torch.Generator().manual_seed(seed)
    inputs, targets = heldout(test.float() / 127.5 - 1, None, opts)
    from gan_core.metrics.frechet import feature_stats, fid_from_stats
    from gan_core.metrics.heldout import target_features

    hr = feature_stats(target_features(train.float() / 127.5 - 1))  # the evaluator's FID reference

    def evaluate() -> dict:
        with torch.no_grad():
            sr = state.G_ema.eval()(inputs).clamp(-1, 1)
        fid = lambda x: fid_from_stats(feature_stats(target_features(x)), hr)  # noqa: E731
        return {**score(state.G_ema, inputs, targets, opts), "fid": fid(sr), "fid_bicubic": fid(upsample(inputs, scale))}

    scores, elapsed = [], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        step(state, [{"images": train[torch.randint(0, len(train), (batch,), generator=g)]}], t)
        state.step += 1
        ema_update(state.G_ema, state.G, t.ema_decay if state.step > t.ema_start else 0.0)
        elapsed += time.perf_counter() - t0
        if state.step == warmup:
            scores.append(evaluate())
    if steps != warmup:
        scores.append(evaluate())
    return scores, elapsed / steps


@pytest.mark.slow
def test_srresnet_beats_bicubic_on_held_out_photo_patches():
    torch.set_num_threads(1)
    (after_mse, after_gan), _ = learn(seed=0, steps=LEARN_STEPS + GAN_STEPS, warmup=LEARN_STEPS)
    assert after_mse["psnr"] - after_mse["psnr_bicubic"] > LEARN_MARGIN_DB, after_mse
    assert after_mse["ssim"] > after_mse["ssim_bicubic"], after_mse
    assert after_gan["psnr"] > after_mse["psnr"] - GAN_PSNR_MARGIN_DB, (after_mse, after_gan)  # the GAN phase


# Measured with `python tests/test_srgan.py 0 1 2` (1 thread, 33-53 ms/step on a loaded machine): after
# 2500 MSE steps, with the dihedral augmentation on (the default), PSNR beats bicubic (28.34 dB) by
# +1.25, +1.40, +1.20 dB and SSIM (0.8285) by +0.031, +0.033, +0.036; 300 GAN steps then change PSNR
# by +0.08, -0.16, +0.01 dB. Without the augmentation the margins were +0.44, +0.63, +0.44 dB. The
# threshold leaves 0.4 dB of room below the smallest margin. FID of the SR patches against the HR
# training patches (random-conv features) over those 300 GAN steps: 0.226 -> 0.222, 0.238 -> 0.221,
# 0.252 -> 0.250: lower for every seed, by too little (0.002 for seed 2) to assert.
LEARN_STEPS = 2500
LEARN_MARGIN_DB = 0.8
GAN_STEPS = 300
GAN_PSNR_MARGIN_DB = 0.5  # the GAN phase may trade this much PSNR (measured +0.08, -0.16, +0.01 dB)


if __name__ == "__main__":  # the margins behind LEARN_MARGIN, and what the GAN phase then does to PSNR
    torch.set_num_threads(1)
    for s in [int(a) for a in sys.argv[1:]] or [0]:
        (mse, gan), per_step = learn(seed=s, steps=LEARN_STEPS + GAN_STEPS, warmup=LEARN_STEPS)
        print(f"seed {s}: {per_step * 1e3:.0f} ms/step | after MSE: psnr {mse['psnr']:.2f} vs bicubic "
              f"{mse['psnr_bicubic']:.2f} ({mse['psnr'] - mse['psnr_bicubic']:+.2f} dB), ssim {mse['ssim']:.4f} vs "
              f"{mse['ssim_bicubic']:.4f} | after {GAN_STEPS} GAN steps: psnr {gan['psnr']:.2f} "
              f"({gan['psnr'] - mse['psnr']:+.2f} dB), ssim {gan['ssim']:.4f} | fid {mse['fid']:.3f} -> "
              f"{gan['fid']:.3f} (bicubic {mse['fid_bicubic']:.3f})", flush=True)


def test_warmup_defaults_to_two_thirds_and_a_set_one_must_end_inside_the_run():
    from gan_core.config import PipelineConfig
    from gan_core.models.srgan import warmup

    cfg = PipelineConfig.from_dict({"model": {"arch": "srgan"}, "train": {"steps": 30}})
    assert cfg.family.warmup_steps == -1 and warmup(cfg.family, cfg.train) == 20
    with pytest.raises(ConfigError, match=r"family.srgan.warmup_steps: 30 must be < train.steps=30"):
        PipelineConfig.from_dict({"model": {"arch": "srgan"}, "train": {"steps": 30},
                                  "family": {"srgan": {"warmup_steps": 30}}})
    with pytest.raises(ConfigError, match=r"family.srgan.scale: must be one of"):
        PipelineConfig.from_dict({"model": {"arch": "srgan"}, "family": {"srgan": {"scale": 3}}})


def test_dihedral_turns_each_image_to_one_of_the_eight_orientations_and_draws_all_of_them():
    from gan_core.models.srgan import dihedral

    base = torch.arange(9.0).reshape(1, 1, 3, 3)  # asymmetric: its 8 orientations all differ
    orientations = [t for r in range(4) for t in (torch.rot90(base, r, (-2, -1)),
                                                  torch.rot90(base.flip(-1), r, (-2, -1)))]
    assert len({tuple(o.flatten().tolist()) for o in orientations}) == 8
    torch.manual_seed(0)
    out = dihedral(base.repeat(400, 2, 1, 1))
    seen = set()
    for img in out:
        assert torch.equal(img[0], img[1])  # one orientation per image, the same for its channels
        match = [i for i, o in enumerate(orientations) if torch.equal(img[:1], o[0])]
        assert len(match) == 1, img
        seen.add(match[0])
    assert seen == set(range(8))
    torch.manual_seed(0)
    assert torch.equal(dihedral(base.repeat(400, 2, 1, 1)), out)  # the torch RNG decides: resumable


def test_augment_is_a_family_switch_refused_when_not_a_bool():
    assert Options(augment=False).augment is False
    with pytest.raises(ConfigError, match=r"family.augment: must be true or false"):
        Options(augment="yes")
