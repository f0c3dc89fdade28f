"""Every family's generator survives the registry format: torch.export (pt2) with a dynamic batch,
loaded back through MLflow without unpickling, drawing the same images as the module."""
import pytest
import torch

from conftest import tiny_config
from gan_core.metrics.fid import draw
from gan_core.models import ARCHS
from gan_core.train import build_state


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_exported_generator_matches_the_module(arch, tmp_path):
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.register import export_args
    from gan_core.latent import LatentSpec

    torch.manual_seed(0)
    G = build_state(tiny_config(model={"arch": arch}), n_classes=4).G_ema.eval()
    mlflow.pytorch.save_model(G, str(tmp_path / "m"), **export_args(G))
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    spec = LatentSpec.from_dict(Model.load(str(tmp_path / "m")).metadata["latent"])
    assert spec == G.latent
    loaded.latent = spec
    for n in (3, 17):  # the batch dimension is dynamic
        expected, got = draw(G, n, seed=5, batch_size=n), draw(loaded, n, seed=5, batch_size=n)
        assert torch.allclose(expected.images, got.images, atol=1e-5)
        assert got.labels is None or torch.equal(expected.labels, got.labels)
