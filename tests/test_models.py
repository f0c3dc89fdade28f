import pytest
import torch

from gan_core.config import PipelineConfig
from gan_core.models import ARCHS, get_family
from gan_core.config import ConfigError


@pytest.mark.parametrize("res", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes_and_range(res, channels):
    cfg = PipelineConfig.from_dict({"data": {"resolution": res, "channels": channels},
                                    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8}})
    fam = ARCHS["dcgan"]
    G, D = fam.build_g(cfg.model, cfg.data), fam.build_d(cfg.model, cfg.data)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, res, res)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)


def test_family_registry_declares_what_the_pipeline_needs():
    fam = get_family("dcgan")
    assert fam.dataset_kind == "unconditional" and set(fam.losses) == {"nonsat", "hinge"} and "fid" in fam.metrics
    with pytest.raises(ConfigError, match="model.arch"):
        get_family("nope")
