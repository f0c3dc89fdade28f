"""Every family's generator survives the registry format: torch.export (pt2) with a dynamic batch,
loaded back through MLflow without unpickling, drawing the same images as the module."""
import pytest
import torch

from conftest import tiny_config
from gan_core.metrics.fid import draw
from gan_core.models import ARCHS
from gan_core.train import build_state


NOISE = sorted(n for n, f in ARCHS.items() if not f.image_input)
IMAGE = sorted(n for n, f in ARCHS.items() if f.image_input)


@pytest.mark.parametrize("arch", NOISE)
def test_exported_generator_matches_the_module(arch, tmp_path):
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.register import export_args
    from gan_core.latent import LatentSpec

    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": arch})
    G = build_state(cfg, n_classes=4).G_ema.eval()
    mlflow.pytorch.save_model(G, str(tmp_path / "m"), **export_args(cfg, G))
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    spec = LatentSpec.from_dict(Model.load(str(tmp_path / "m")).metadata["latent"])
    assert spec == G.latent
    loaded.latent = spec
    for n in (3, 17):  # the batch dimension is dynamic
        expected, got = draw(G, n, seed=5, batch_size=n), draw(loaded, n, seed=5, batch_size=n)
        assert torch.allclose(expected.images, got.images, atol=1e-5)
        assert got.labels is None or torch.equal(expected.labels, got.labels)


@pytest.mark.parametrize("arch", IMAGE)
def test_exported_translator_takes_other_batches_and_sizes(arch, tmp_path):
    """Image-conditioned generators are exported fully convolutional: batch, height and width are
    dynamic, so a model trained on 16 px inputs translates 32 px ones."""
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.register import export_args, export_context

    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": arch}, data={"resolution": 16})
    family = ARCHS[arch]
    module = family.infer(build_state(cfg).G_ema.eval())
    with export_context(cfg):
        mlflow.pytorch.save_model(module, str(tmp_path / "m"), **export_args(cfg, module))
    meta = Model.load(str(tmp_path / "m")).metadata
    assert meta["arch"] == arch and meta["directions"] == list(family.directions)
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    side = meta["input"]["resolution"]
    for n, size in ((3, side), (2, 2 * side)):
        x = torch.rand(n, cfg.data.channels, size, size, generator=torch.Generator().manual_seed(n)) * 2 - 1
        args = (x,) + ((torch.arange(n) % len(family.directions),) if family.directions else ())
        with torch.no_grad():
            expected, got = module(*args), loaded(*args)
        assert got.shape[0] == n and got.shape[-1] == expected.shape[-1] > size - 1
        assert torch.allclose(expected, got, atol=1e-4)
