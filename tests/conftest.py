import os

import numpy as np
import pytest
import torch

# The suite drills faults (GANPIPE_FAULT_*), which act only with drills switched on; the processes
# tests start inherit it. tests/test_drills.py checks that without it every seam stays inert.
os.environ["GANPIPE_DRILLS"] = "1"

from gan_core.config import PipelineConfig


def tiny_config(**sections) -> PipelineConfig:
    """8x8, narrow nets, a few steps: shapes and mechanics, not quality."""
    base = {"data": {"resolution": 8}, "model": {"z_dim": 8, "g_channels": 8, "d_channels": 8},
            "train": {"steps": 4, "batch_size": 8, "num_workers": 1, "log_every": 2, "checkpoint_every": 2},
            "eval": {"n_fake": 64, "batch_size": 32},
            "family": {"progan": {"fade_images": 8, "stable_images": 8}, "stylegan": {"mapping_layers": 2}}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    # progan starts at the final resolution (growth takes more steps than these tests run: test_progan.py
    # and test_growth.py cover it)
    base["family"]["progan"].setdefault("start_resolution", base["data"]["resolution"])
    return PipelineConfig.from_dict(base)


def blobs(n: int = 96, res: int = 8, classes: int = 4, seed: int = 0):
    """uint8 (n, 1, res, res) images of one bright square per class at a class-specific corner."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % classes
    images = rng.integers(0, 30, (n, 1, res, res)).astype(np.uint8)
    h = res // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, 0, r * h:(r + 1) * h, col * h:(col + 1) * h] = 220
    return images, labels


@pytest.fixture
def cfg():
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def prepared_blobs(tmp_path_factory):
    """A prepared 4-class blobs dataset with its domain-classifier evaluator files."""
    from gan_core.data import write_prepared
    from gan_core.metrics.evaluator import build_evaluator

    images, labels = blobs(256)
    folder = tmp_path_factory.mktemp("ds") / "blobs"
    write_prepared(folder, images, labels, {"name": "blobs"},
                   extras=lambda tmp, m: build_evaluator(tmp, images, labels, m))
    return folder


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """One MLflow server and one Prefect server on 127.0.0.1, what a team's machines share: started
    once for every test that asks (cross-machine promotion, run history on the services)."""
    from servers import team_servers

    with team_servers(tmp_path_factory.mktemp("servers")) as urls:
        yield urls
