import pytest
import torch

from conftest import tiny_config
from gan_core.data import load_manifest
from gan_core.latent import LatentSpec
from gan_core.metrics.evaluator import load_evaluator
from gan_core.metrics.fid import Fingerprint, metric_name
from gan_core.metrics.frechet import MetricError
from gan_core.train import build_state


@pytest.fixture
def prepared(prepared_blobs):
    return prepared_blobs


def test_backbone_learns_the_domain(prepared):
    import json

    info = json.loads((prepared / "backbones" / "domain-classifier.json").read_text())
    assert info["heldout_accuracy"] > 0.9  # 4 well-separated classes


def test_same_model_and_seed_give_the_same_fid_bit_for_bit(prepared):
    ev = load_evaluator(prepared, load_manifest(prepared))
    G = build_state(tiny_config()).G_ema
    a, fa = ev.evaluate(G, 128, seed=5, batch_size=64)
    b, fb = ev.evaluate(G, 128, seed=5, batch_size=64)
    assert a == b and fa == fb and a["fid_128"] > 0
    assert set(a) == {"fid_128", "kid_128", "kid_128_std", "is_128", "is_128_std", "precision_128", "recall_128"}
    c, _ = ev.evaluate(G, 128, seed=6, batch_size=64)
    assert c["fid_128"] != a["fid_128"]


def test_real_data_scores_well_and_an_untrained_generator_badly(prepared):
    from gan_core.data import load_prepared, to_float

    ev = load_evaluator(prepared, load_manifest(prepared))
    real = to_float(torch.from_numpy(load_prepared(prepared).images))

    class Replay(torch.nn.Module):  # a "generator" that returns held real images
        latent = LatentSpec(1)

        def forward(self, z):
            idx = (z[:, 0].abs() * 1e6).long() % len(real)
            return real[idx]

    good, _ = ev.evaluate(Replay(), 256, 0, 64)
    bad, _ = ev.evaluate(build_state(tiny_config()).G_ema, 256, 0, 64)
    assert good["fid_256"] < bad["fid_256"] and good["kid_256"] < bad["kid_256"]
    assert good["precision_256"] > 0.8 and good["recall_256"] > 0.5 and good["is_256"] > 3.0  # 4 classes
    assert bad["precision_256"] < good["precision_256"]


def test_fingerprint_names_what_moves_the_number(prepared):
    ev = load_evaluator(prepared, load_manifest(prepared))
    f1, f2 = ev.fingerprint(2000), ev.fingerprint(500)
    assert f1.id != f2.id and f1.n_real == 256 and f1.resize == "none"
    assert Fingerprint.from_dict(f1.to_dict()) == f1
    assert metric_name(2000) == "fid_2k" and metric_name(500) == "fid_500" and metric_name(10000) == "fid_10k"


def test_reference_stats_refuse_another_dataset(prepared):
    m = dict(load_manifest(prepared), content_sha256="0" * 64)
    with pytest.raises(MetricError, match="not on this dataset"):
        load_evaluator(prepared, m)


def test_resolution_mismatch_is_an_error(prepared):
    ev = load_evaluator(prepared, load_manifest(prepared))
    G = build_state(tiny_config(data={"resolution": 16})).G_ema
    with pytest.raises(MetricError, match="images are"):
        ev.evaluate(G, 32, 0, 32)


def test_loading_an_evaluator_does_not_consume_the_callers_rng(prepared):
    torch.manual_seed(3)
    expected = torch.randn(4)
    torch.manual_seed(3)
    load_evaluator(prepared, load_manifest(prepared))
    assert torch.equal(torch.randn(4), expected)
