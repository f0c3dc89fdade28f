"""Every family's generator survives the registry format: torch.export (pt2) with a dynamic batch,
loaded back through MLflow without unpickling, drawing the same images as the module."""
import pytest
import torch

from conftest import tiny_config
from gan_core.metrics.fid import draw
from gan_core.models import ARCHS
from gan_core.train import build_state


NOISE = sorted(n for n, f in ARCHS.items() if not f.image_input and f.conditioning == "latent")  # text: test_stackgan
IMAGE = sorted(n for n, f in ARCHS.items() if f.image_input)


@pytest.mark.parametrize("arch", NOISE)
def test_exported_generator_matches_the_module(arch, tmp_path):
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.stages.register import export_args
    from gan_core.latent import LatentSpec

    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": arch})
    state = build_state(cfg, n_classes=4)
    G = state.family.infer(state.G_ema.eval())  # what registration exports
    mlflow.pytorch.save_model(G, str(tmp_path / "m"), **export_args(cfg, G))
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    meta = Model.load(str(tmp_path / "m")).metadata
    spec = LatentSpec.from_dict(meta["latent"])
    assert spec == G.latent
    if "style" in meta:  # takes (z, z_mix, psi, crossover): loaded as the CLI loads it
        from flows.cli.styles import StyleDefaults

        loaded = StyleDefaults(loaded, spec, meta)
    loaded.latent = spec
    for n in (3, 17):  # the batch dimension is dynamic
        expected, got = draw(G, n, seed=5, batch_size=n), draw(loaded, n, seed=5, batch_size=n)
        assert torch.allclose(expected.images, got.images, atol=1e-5)
        assert got.labels is None or torch.equal(expected.labels, got.labels)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("arch", IMAGE)
def test_exported_translator_takes_other_batches_and_sizes(arch, channels_last, tmp_path):
    """Image-conditioned generators are exported fully convolutional: batch, height and width are
    dynamic, so a model trained on 16 px inputs translates 32 px ones, also when it trained channels-last."""
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.stages.register import export_args, export_context, exported

    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": arch}, data={"resolution": 16}, train={"channels_last": channels_last})
    family = ARCHS[arch]
    module = exported(build_state(cfg))  # as registration exports it
    with export_context(cfg):
        mlflow.pytorch.save_model(module, str(tmp_path / "m"), **export_args(cfg, module))
    meta = Model.load(str(tmp_path / "m")).metadata
    assert meta["arch"] == arch and meta["directions"] == list(family.directions)
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    side = meta["input"]["resolution"]
    for n, size in ((3, side), (2, 2 * side), (1, side)):  # one image, as `ganpipe translate` sends
        x = torch.rand(n, cfg.data.channels, size, size, generator=torch.Generator().manual_seed(n)) * 2 - 1
        args = (x,) + ((torch.arange(n) % len(family.directions),) if family.directions else ())
        with torch.no_grad():
            expected, got = module(*args), loaded(*args)
        assert got.shape[0] == n and got.shape[-1] == expected.shape[-1] > size - 1
        assert torch.allclose(expected, got, atol=1e-4)


def test_an_exported_style_model_keeps_truncation_and_mixing(tmp_path):
    """The registered stylegan program takes psi and a second latent with its crossover, and gives what
    the module gives: sampling with --truncation and --mix needs no Python code of the model."""
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.cli.styles import StyleDefaults, mixing_grid
    from flows.stages.register import export_args

    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": "stylegan"})
    state = build_state(cfg)
    with torch.no_grad():
        state.G_ema.w_avg.normal_()  # a centre away from 0, so truncation visibly moves images
    S = state.family.infer(state.G_ema.eval())
    mlflow.pytorch.save_model(S, str(tmp_path / "m"), **export_args(cfg, S))
    meta = Model.load(str(tmp_path / "m")).metadata
    assert meta["style"]["num_ws"] == S.G.num_ws and len(meta["style"]["layer_resolutions"]) == S.G.num_ws
    loaded = StyleDefaults(mlflow.pytorch.load_model(str(tmp_path / "m")), S.latent, meta)
    eager = StyleDefaults(S, S.latent, meta)
    z, z2 = torch.randn(5, cfg.model.z_dim), torch.randn(5, cfg.model.z_dim)
    for psi, cross in ((0.7, S.G.num_ws), (1.0, 2), (0.5, 1)):
        assert torch.allclose(loaded(z, z2, psi=psi, crossover=cross), eager(z, z2, psi=psi, crossover=cross),
                              atol=1e-5)
    assert not torch.allclose(loaded(z, psi=0.5), loaded(z))
    grid, cols = mixing_grid(loaded, [0, 1], [2, 3, 4], psi=1.0, layers=2)
    assert grid.shape[0] == (2 + 1) * (3 + 1) and cols == 4
