"""Every family's mechanics: shapes, one step, checkpoint round trip, defaults and refusals.
How well each family *learns* is tests/test_learning.py."""
import math

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.checkpoint import load_checkpoint, rebuild, rng_state, save_checkpoint, to_checkpoint
from gan_core.config import ConfigError, PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.models import ARCHS, get_family
from gan_core.steps import split_d
from gan_core.train import batch_position, build_state, train

# noise -> image; others (and autoencoders, whose G reads images in training): test_<family>.py
FAMILIES = sorted(n for n, f in ARCHS.items() if not f.image_input and f.encode is None
            and f.conditioning == "latent")  # text families: tests/test_stackgan.py
CLASSES = 4  # the blobs fixture's classes
# their D ends in ProGAN's stddev map by design, so they refuse model.minibatch (tested below)
FIXED_HEAD = {"progan", "stylegan"}
WITH_MINIBATCH = [(a, m) for a in FAMILIES for m in ("none", "mbd", "stddev") if m == "none" or a not in FIXED_HEAD]


def fam_config(arch, minibatch="none", **train_cfg):
    # n_critic 2 keeps the critics' multi-batch path exercised while staying fast
    extra = {"n_critic": 2} if ARCHS[arch].defaults.get("train", {}).get("n_critic", 1) > 1 else {}
    return tiny_config(model={"arch": arch, "minibatch": minibatch}, train={**extra, **train_cfg})


def batches_for(cfg, n=8):
    images, labels = blobs(n * cfg.train.n_critic)
    return [{"images": torch.from_numpy(images[i * n:(i + 1) * n]), "labels": torch.from_numpy(labels[i * n:(i + 1) * n])}
            for i in range(cfg.train.n_critic)]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("res,channels", [(8, 1), (16, 3), (32, 1)])
def test_shapes_and_range(arch, res, channels):
    cfg = tiny_config(model={"arch": arch}, data={"resolution": res, "channels": channels})
    s = build_state(cfg, n_classes=CLASSES)
    lat = s.G.latent.sample(5)
    x = s.G(*lat.inputs)
    assert x.shape == (5, channels, res, res)
    # what is evaluated, sampled and exported stays in [-1, 1] (progan and stylegan train a linear output,
    # as their papers, and clamp it there; the others end in tanh)
    with torch.no_grad():
        shown = s.family.infer(s.G_ema.eval())(*lat.inputs)
    assert shown.shape == x.shape and shown.min() >= -1 and shown.max() <= 1
    logits, q = split_d(s.D(x, lat.y))
    assert logits.shape == (5,)
    if arch == "infogan":
        assert q[0].shape == (5, cfg.family.code_cat) and q[1].shape == (5, cfg.family.code_cont)
    else:
        assert q is None


@pytest.mark.parametrize("arch", sorted(FIXED_HEAD))
def test_families_with_their_own_d_head_refuse_a_minibatch_layer(arch):
    with pytest.raises(ConfigError, match=r"^model.minibatch: "):
        fam_config(arch, "mbd")


@pytest.mark.parametrize("arch, minibatch", WITH_MINIBATCH)
def test_one_step_changes_g_and_d_and_stays_finite(arch, minibatch):
    cfg = fam_config(arch, minibatch)
    s = build_state(cfg, n_classes=CLASSES)
    g0 = [p.detach().clone() for p in s.G.parameters()]
    d0 = [p.detach().clone() for p in s.D.parameters()]
    out = s.family.step(s, batches_for(cfg), cfg.train)
    assert {"loss_d", "loss_g"} <= set(out) and all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, s.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, s.D.parameters()))
    assert all(p.requires_grad for p in s.D.parameters())
    expected = {"wgan": {"wasserstein"}, "wgan_gp": {"wasserstein", "gp"}, "infogan": {"info"},
                "biggan": {"ortho"}, "progan": {"wasserstein", "gp", "drift", "resolution", "alpha"},
                "stylegan": {"r1"}}.get(arch, set())  # stylegan: R1 is due at step 0 (every 16)
    assert set(out) - {"loss_d", "loss_g"} == expected  # the family-specific metrics MLflow gets


@pytest.mark.parametrize("arch", FAMILIES)
def test_checkpoint_round_trip(arch, tmp_path):
    cfg = fam_config(arch, steps=2, log_every=1, checkpoint_every=2)
    torch.manual_seed(0)
    s = build_state(cfg, n_classes=CLASSES)
    images, labels = blobs(64)
    b = ShardedBatches({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, 8, 0, 1, 0)
    train(s, b.from_step(0), cfg)
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(s, cfg, [rng_state()]))
    cfg2, s2 = rebuild(load_checkpoint(tmp_path / "c.pt"))
    assert cfg2 == cfg and s2.n_classes == s.n_classes and s2.step == 2
    for a, b_ in [(s.G, s2.G), (s.D, s2.D), (s.G_ema, s2.G_ema)]:
        sd2 = b_.state_dict()
        # tensors bit for bit; a growing family's stage (extra state: a dict) equal
        assert all(torch.equal(v, sd2[k]) if torch.is_tensor(v) else v == sd2[k] for k, v in a.state_dict().items())
    lat = s.G_ema.latent.sample(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s.G_ema(*lat.inputs), s2.G_ema(*lat.inputs))  # the restored G draws the same images


def test_a_critic_family_reads_n_critic_batches_per_step():
    cfg = tiny_config(model={"arch": "wgan"}, train={"steps": 3, "log_every": 3, "checkpoint_every": 3})
    assert cfg.train.n_critic == 5 and batch_position(3, cfg) == 15
    s = build_state(cfg)
    images, labels = blobs(256)
    train(s, ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0).from_step(0), cfg)
    assert s.step == 3 and s.images_seen == 3 * 5 * 8


def test_weight_clipping_keeps_the_critic_in_the_box():
    cfg = fam_config("wgan", steps=1)
    s = build_state(cfg)
    with torch.no_grad():
        for p in s.D.parameters():
            p.mul_(100)
    s.family.step(s, batches_for(cfg), cfg.train)
    assert max(p.abs().max().item() for p in s.D.parameters()) <= cfg.family.clip == 0.01


def test_family_defaults_apply_where_params_are_silent_and_yield_to_explicit_values():
    wgan = PipelineConfig.from_dict({"model": {"arch": "wgan"}})
    assert (wgan.model.loss, wgan.train.optimizer, wgan.train.n_critic, wgan.family.clip, wgan.train.lr_d) == \
        ("wasserstein", "rmsprop", 5, 0.01, 5e-5)
    gp = PipelineConfig.from_dict({"model": {"arch": "wgan_gp"}, "train": {"n_critic": 3}})
    assert (gp.family.gp_lambda, gp.train.beta1, gp.train.beta2, gp.train.n_critic) == (10.0, 0.0, 0.9, 3)
    big = PipelineConfig.from_dict({"model": {"arch": "biggan"}})
    assert (big.model.loss, big.model.g_channels, big.family.ortho_reg, big.train.beta1) == ("hinge", 32, 1e-4, 0.0)
    dc = PipelineConfig.from_dict({"model": {"arch": "dcgan"}})
    assert (dc.model.loss, dc.train.optimizer, dc.train.n_critic, dc.train.lr_g) == ("nonsat", "adam", 1, 2e-4)
    assert PipelineConfig.from_dict(wgan.to_dict()) == wgan  # resolved values round-trip (checkpoints)


def test_conditional_family_needs_labels():
    with pytest.raises(ConfigError, match="model.arch: cgan is class-conditional"):
        build_state(tiny_config(model={"arch": "cgan"}), n_classes=0)
    with pytest.raises(ConfigError, match="model.loss"):
        build_state(tiny_config(model={"arch": "wgan", "loss": "nonsat"}))


def test_registry_declares_what_the_pipeline_needs():
    assert {"vanilla", "dcgan", "cgan", "wgan", "wgan_gp", "infogan", "biggan", "pix2pix"} <= set(ARCHS)
    for fam in ARCHS.values():  # the gate metric is one the family's evaluation reports
        assert fam.gate.metric in fam.metrics, fam.name
        assert fam.image_input == (fam.dataset_kind in ("paired", "unpaired", "superres"))
    assert get_family("pix2pix").gate.higher_is_better and not get_family("dcgan").gate.higher_is_better
    assert get_family("cgan").conditional and get_family("biggan").conditional
    assert not any(get_family(a).conditional for a in ("vanilla", "dcgan", "wgan", "wgan_gp", "infogan"))
    assert "class_acc" in get_family("cgan").metrics and "code_nmi" in get_family("infogan").metrics
    for fam in ARCHS.values():
        cfg = PipelineConfig.from_dict({"model": {"arch": fam.name}})
        assert cfg.model.loss in fam.losses
    with pytest.raises(ConfigError, match="model.arch"):
        get_family("nope")


def test_conditional_generator_follows_the_requested_label_input():
    s = build_state(tiny_config(model={"arch": "cgan"}), n_classes=CLASSES)
    G = s.G_ema
    z = torch.randn(1, G.latent.z_dim).repeat(CLASSES, 1)
    images = G(z, torch.arange(CLASSES))
    assert not torch.equal(images[0], images[1])  # same z, other class: other image
    with pytest.raises(ValueError, match="labels: must be in"):
        G.latent.sample(2, labels=torch.tensor([0, CLASSES]))


@pytest.mark.parametrize("arch", ["wgan_gp", "cgan", "infogan"])
def test_resume_continues_exactly_like_an_uninterrupted_run(arch, tmp_path):
    """n_critic batches per step, labels and codes: a resumed run must see the same batches and
    latents as the straight one (batch_position, per-rank RNG in the checkpoint)."""
    def run(steps, state=None):
        cfg = fam_config(arch, steps=steps, log_every=2, checkpoint_every=2)
        torch.manual_seed(1)
        s = state or build_state(cfg, n_classes=CLASSES)
        images, labels = blobs(64)
        b = ShardedBatches({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, 8, 0, 1, 0)
        return train(s, b.from_step(batch_position(s.step, cfg)), cfg), cfg

    straight, cfg = run(4)
    half, _ = run(2)
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(half, cfg, [rng_state()]))
    torch.manual_seed(999)
    from gan_core.checkpoint import restore

    resumed = restore(build_state(cfg, n_classes=CLASSES), load_checkpoint(tmp_path / "c.pt"), rank=0)
    cfg4 = fam_config(arch, steps=4, log_every=2, checkpoint_every=2)
    images, labels = blobs(64)
    b = ShardedBatches({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, 8, 0, 1, 0)
    train(resumed, b.from_step(batch_position(2, cfg4)), cfg4)
    for a, b_ in [(straight.G_ema, resumed.G_ema), (straight.D, resumed.D)]:
        sd = b_.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in a.state_dict().items())


# Configs written before these settings moved to their family's section (checkpoints, params.yaml files
# of older versions, as dataclasses.asdict wrote every flat field)
OLD_FLAT = {"model": {"embed_dim": 32, "code_cat": 10, "code_cont": 2, "attention": 8},
            "train": {"clip": 0.0, "gp_lambda": 0.0, "ortho_reg": 0.0, "info_lambda": 1.0}}


def _old(arch: str, **changes) -> dict:
    d = {"model": {"arch": arch, **OLD_FLAT["model"]}, "train": dict(OLD_FLAT["train"])}
    for key, value in changes.items():
        section, name = key.split("__")
        d[section][name] = value
    return d


def test_an_old_flat_config_loads_with_its_values_in_the_owning_family_section():
    gp = PipelineConfig.from_dict(_old("wgan_gp", train__gp_lambda=5.0))
    assert gp.family.gp_lambda == 5.0
    info = PipelineConfig.from_dict(_old("infogan", model__code_cat=4, train__info_lambda=2.0))
    assert (info.family.code_cat, info.family.code_cont, info.family.info_lambda) == (4, 2, 2.0)
    big = PipelineConfig.from_dict(_old("biggan", train__ortho_reg=1e-3, model__attention=0))
    assert (big.family.ortho_reg, big.family.attention, big.family.embed_dim) == (1e-3, 0, 32)
    # inert for the selected family: dropped; dcgan's config is what it would be written today
    assert PipelineConfig.from_dict(_old("dcgan")) == PipelineConfig.from_dict({"model": {"arch": "dcgan"}})


def test_an_explicit_family_value_wins_over_an_old_flat_one():
    d = {**_old("wgan", train__clip=0.02), "family": {"wgan": {"clip": 0.05}}}
    assert PipelineConfig.from_dict(d).family.clip == 0.05


def test_an_old_setting_that_acted_on_a_family_that_no_longer_takes_it_is_refused_with_its_new_place():
    with pytest.raises(ConfigError, match=r"^train.gp_lambda: moved to family.<arch>.gp_lambda .*wgan_gp.*dcgan"):
        PipelineConfig.from_dict(_old("dcgan", train__gp_lambda=10.0))


@pytest.mark.parametrize("arch, field, value, reason", [
    ("wgan_gp", "gp_lambda", -1.0, "finite number >= 0"), ("wgan", "clip", float("nan"), "finite number"),
    ("infogan", "code_cat", -1, "integer >= 0"), ("biggan", "attention", 6, "power of two"),
    ("cgan", "embed_dim", 0, "integer >= 1")])
def test_family_settings_are_validated_by_the_family_and_named(arch, field, value, reason):
    with pytest.raises(ConfigError, match=rf"^family.{arch}.{field}: .*{reason}"):
        PipelineConfig.from_dict({"model": {"arch": arch}, "family": {arch: {field: value}}})
