"""Image-conditioned families through the whole pipeline, as a user runs them: `ganpipe run` on a
built-in dataset of their kind (Ray Train DDP on two workers, held-out evaluation, registration
gated on the family's metric and direction), then `ganpipe translate` with the registered program
on an image of another size than the training one, and `ganpipe sample`'s input | output | target."""
import json

import numpy as np
import pytest
from PIL import Image

from workspace import TINY, ganpipe, make_workspace

pytestmark = pytest.mark.slow

CASES = {  # arch: (built-in dataset, data section, family settings, translate options)
    "pix2pix": ("edges2digits", {"resolution": 16, "channels": 1}, {}, []),
    "cyclegan": ("digits-inverted", {"resolution": 16, "channels": 1}, {"identity": 0.0}, ["--direction", "b2a"]),
    # x4 from 8 px LR; 40 steps: the MSE warm-up (two thirds), then the GAN phase with the content backbone
    "srgan": ("photo-patches", {"resolution": 32, "channels": 3}, {"blocks": 2}, []),
}
SCALE = {"srgan": 4}  # output side / input side


def _mlflow(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")


@pytest.mark.parametrize("arch", sorted(CASES))
def test_run_gates_on_the_family_metric_and_translates_other_sizes(arch, tmp_path):
    from gan_core.checkpoint import load_checkpoint
    from gan_core.models import get_family

    dataset, data, options, translate_opts = CASES[arch]
    family = get_family(arch)
    params = {**TINY, "data": {"name": dataset, **data}, "model": {"arch": arch}, "family": {arch: options}}
    ws = make_workspace(tmp_path, params)
    r = ganpipe(ws, "run", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    manifest = json.loads((ws / "data" / "prepared" / dataset / "manifest.json").read_text())
    n = manifest["heldout"]
    assert ev["metric"] == f"{family.gate.metric}_{n}" and ev["higher_is_better"] == family.gate.higher_is_better
    assert ev["fingerprint"]["n_fake"] == n and np.isfinite(ev["value"])
    assert f"{ev['metric']} (heldout-{arch}, {family.gate.direction} is better)" in r.stdout
    train = json.loads((ws / "models" / "candidate" / "train.json").read_text())
    name = f"ganpipe-{dataset}-{arch}"
    c = _mlflow(ws)
    tags = c.get_model_version(name, "1").tags
    assert tags["eval.metric"] == ev["metric"] and float(tags["eval.value"]) == pytest.approx(ev["value"])
    assert tags["eval.higher_is_better"] == str(family.gate.higher_is_better).lower()
    assert tags["ray.run_name"] == train["run_name"]
    assert len(c.get_run(train["mlflow_run_id"]).data.tags["ray.node_ids"].split(",")) == 2  # DDP, two workers

    for k in family.lineage:  # what the family resolved while training (SRGAN: its content-loss backbone)
        assert tags[f"family.{k}"] == str(load_checkpoint(ws / "models" / "candidate" / "checkpoint.pt")["extra"][k])

    # twice the training input: the exported program is fully convolutional
    side, scale = 2 * manifest["shape"][-1] // SCALE.get(arch, 1), SCALE.get(arch, 1)
    shape = (side, side, 3) if data["channels"] == 3 else (side, side)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "in.png")
    out = ganpipe(ws, "translate", f"models:/{name}@champion", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                  *translate_opts, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert Image.open(tmp_path / "out.png").size == (side * scale, side * scale)
    s = ganpipe(ws, "sample", f"models:/{name}@champion", "--n", "4", "--out", str(tmp_path / "grid.png"), timeout=300)
    assert s.returncode == 0 and json.loads(Image.open(tmp_path / "grid.png").text["ganpipe"])["model"].endswith("@champion")


def test_a_dataset_of_the_wrong_kind_is_refused_before_any_work(tmp_path):
    ws = make_workspace(tmp_path)
    r = ganpipe(ws, "run", "model.arch=pix2pix", "data.name=digits", timeout=120)
    assert r.returncode == 2
    assert "built-in digits is a labelled dataset; pix2pix trains on paired data" in r.stderr
    assert not (ws / "data" / "prepared").exists() and not (ws / "models" / "candidate").exists()
    r = ganpipe(ws, "run", "model.arch=dcgan", "data.name=edges2digits", timeout=120)
    assert r.returncode == 2 and "built-in edges2digits is a paired dataset; dcgan trains on" in r.stderr
