import pytest

from flows.ops.params import load_config, parse_override
from gan_core.config import ConfigError, PipelineConfig


def test_defaults_round_trip_and_hash_is_stable():
    cfg = PipelineConfig()
    again = PipelineConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.params_hash() == cfg.params_hash()
    assert PipelineConfig.from_dict({"train": {"steps": 7}}).params_hash() != cfg.params_hash()


@pytest.mark.parametrize("d, field", [
    ({"train": {"stepz": 1}}, "train.stepz"),
    ({"trian": {}}, "trian"),
    ({"train": {"steps": -1}}, "train.steps"),
    ({"train": {"steps": "10"}}, "train.steps"),
    ({"train": {"batch_size": 63, "num_workers": 2}}, "train.batch_size"),
    ({"data": {"resolution": 12}}, "data.resolution"),
    ({"data": {"name": "../x"}}, "data.name"),
    ({"train": {"use_gpu": "yes"}}, "train.use_gpu"),
    ({"register": {"promotion_margin": -1}}, "register.promotion_margin"),
])
def test_bad_values_name_the_field(d, field):
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict(d)
    assert e.value.field == field and str(e.value).startswith(field)


def test_ints_become_floats_but_nothing_else_is_coerced():
    assert PipelineConfig.from_dict({"train": {"lr_g": 1}}).train.lr_g == 1.0
    with pytest.raises(ConfigError):
        PipelineConfig.from_dict({"train": {"lr_g": True}})


def test_override_parsing():
    assert parse_override("train.steps=500") == (("train", "steps"), 500)
    assert parse_override("model.arch=dcgan") == (("model", "arch"), "dcgan")
    assert parse_override("train.use_gpu=true") == (("train", "use_gpu"), True)
    assert parse_override("family.pix2pix.l1_lambda=50") == (("family", "pix2pix", "l1_lambda"), 50)
    for bad in ("train.steps", "steps=5", "nope.steps=5", "a.b.c=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_overrides_are_written_back_keeping_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("# top comment\ntrain:\n  steps: 10  # why\n  seed: 0\n")
    cfg = load_config(p, ["train.steps=20", "model.loss=hinge"])
    assert cfg.train.steps == 20 and cfg.model.loss == "hinge"
    text = p.read_text()
    assert "# top comment" in text and "# why" in text and "steps: 20" in text and "loss: hinge" in text
    assert load_config(p).train.steps == 20


def test_a_bad_override_changes_nothing(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  steps: 10\n")
    before = p.read_text()
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.steps=5", "train.batch_size=-3"])
    assert e.value.field == "train.batch_size"
    assert p.read_text() == before


@pytest.mark.parametrize("override, field", [("model.arch=nope", "model.arch"), ("model.loss=wasserstein", "model.loss"),
                                             ("eval.backbone=nope", "eval.backbone"), ("data.name=nope", "data.name")])
def test_unknown_registry_names_fail_before_params_are_written(tmp_path, override, field):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  steps: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, [override])
    assert e.value.field == field and p.read_text() == "train:\n  steps: 10\n"


def test_the_shipped_params_survive_an_override_round_trip(tmp_path):
    """Every string in params.yaml must still read as a string after ruamel rewrites the file
    (YAML 1.1 readers turn a bare off/yes/no into booleans)."""
    import shutil
    from pathlib import Path

    p = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", p)
    for arch in ("vanilla", "dcgan", "cgan", "wgan", "wgan_gp", "infogan", "biggan"):
        cfg = load_config(p, [f"model.arch={arch}"])
        assert cfg.model.arch == arch and load_config(p) == cfg
    load_config(p, ["model.minibatch=stddev"])
    assert load_config(p).model.minibatch == "stddev"
