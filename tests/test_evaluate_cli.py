"""`ganpipe evaluate` as a user runs it: a checkpoint against the prepared dataset, folder vs folder,
and clear errors for missing Inception weights and bad usage."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from gan_core.checkpoint import rng_state, save_checkpoint, to_checkpoint
from gan_core.config import PipelineConfig
from gan_core.train import build_state
from workspace import ganpipe, make_workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("eval"))
    r = ganpipe(ws, "stage", "prepare")
    assert r.returncode == 0, r.stderr[-2000:]
    return ws


def _evaluate(ws, *args, **env):
    r = ganpipe(ws, "evaluate", *args, "--json", timeout=300, **env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_checkpoint_scores_are_deterministic_and_fingerprinted(ws, tmp_path):
    cfg = PipelineConfig.from_dict(yaml.safe_load((ws / "params.yaml").read_text()))
    ckpt = tmp_path / "untrained.pt"
    save_checkpoint(ckpt, to_checkpoint(build_state(cfg), cfg, [rng_state()]))
    a = _evaluate(ws, str(ckpt), "--n", "200")
    b = _evaluate(ws, str(ckpt), "--n", "200")
    assert a == b
    assert a["metrics"]["fid_200"] > 50 and a["fingerprint"]["n_fake"] == 200
    assert a["fingerprint"]["backbone"] == "domain-classifier" and a["fingerprint"]["n_real"] == 1797
    assert _evaluate(ws, str(ckpt), "--n", "200", "--seed", "7")["metrics"]["fid_200"] != a["metrics"]["fid_200"]


def _write_pngs(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im[0]).save(folder / f"{i:04d}.png")


def test_folder_vs_folder(ws, tmp_path):
    images = np.load(ws / "data" / "prepared" / "digits" / "images.npy")
    _write_pngs(tmp_path / "real", images[:300])
    _write_pngs(tmp_path / "same", images[:300])
    _write_pngs(tmp_path / "noise", np.random.default_rng(0).integers(0, 256, (300, 1, 16, 16), dtype=np.uint8))
    same = _evaluate(ws, "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "same"))
    noise = _evaluate(ws, "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "noise"))
    assert same["metrics"]["fid_300"] == pytest.approx(0.0, abs=1e-6)
    assert same["metrics"]["precision_300"] == 1.0 and same["metrics"]["recall_300"] == 1.0
    assert noise["metrics"]["fid_300"] > 100 and noise["metrics"]["precision_300"] < 0.1


def test_clear_errors(ws, tmp_path):
    r = ganpipe(ws, "evaluate", "--real", str(tmp_path), timeout=120)
    assert r.returncode == 2 and "--real and --fake go together" in r.stderr
    missing = tmp_path / "nope.pth"
    r = ganpipe(ws, "evaluate", "--real", str(tmp_path), "--fake", str(tmp_path), "--backbone", "inception",
                timeout=120, GANPIPE_INCEPTION_WEIGHTS=str(missing))
    assert r.returncode == 2 and str(missing) in r.stderr, r.stderr[-2000:]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    r = ganpipe(ws, "evaluate", "--real", str(tmp_path / "bad"), "--fake", str(tmp_path / "bad"), timeout=120)
    assert r.returncode == 2 and "x.png: cannot be read as an image" in r.stderr, r.stderr[-2000:]
