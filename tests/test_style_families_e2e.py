"""progan and stylegan through the whole pipeline, as a user runs them: `ganpipe run` (Ray Train DDP on
two workers, the FID gate, MLflow registration, DVC), progan growing 4 -> 16 px on the digits inside the
run, stylegan on the 32 x 32 RGB shapes; then `ganpipe sample` of the registered stylegan with
truncation, a style-mixing grid and an interpolation strip."""
import json

import pytest
from PIL import Image

from workspace import TINY, ganpipe, make_workspace

pytestmark = pytest.mark.slow

CASES = {  # arch: (data section, family settings)
    # 256 images per stage at batch 32: 8 steps each of 4 px, fade 8, 8 px, fade 16; the last 8 at 16 px
    "progan": ({"name": "digits", "resolution": 16, "channels": 1},
               {"fade_images": 256, "stable_images": 256}),
    "stylegan": ({"name": "shapes", "resolution": 32, "channels": 3}, {"mapping_layers": 2}),
}


def _mlflow(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")


def _provenance(path) -> dict:
    return json.loads(Image.open(path).text["ganpipe"])


@pytest.mark.parametrize("arch", sorted(CASES))
def test_run_trains_evaluates_and_registers_the_family(arch, tmp_path):
    from gan_core.checkpoint import load_checkpoint

    data, options = CASES[arch]
    ws = make_workspace(tmp_path, {**TINY, "data": data, "model": {"arch": arch}, "family": {arch: options}})
    r = ganpipe(ws, "run", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    assert ev["metric"] == "fid_300" and ev["higher_is_better"] is False and ev["value"] > 0
    ckpt = load_checkpoint(ws / "models" / "candidate" / "checkpoint.pt")
    assert ckpt["step"] == 40 and ckpt["world"] == 2
    if arch == "progan":  # grown inside the run, ending stable at the data's resolution
        assert ckpt["extra"]["growth"] == {"resolution": 16, "alpha": 1.0}
    name = f"ganpipe-{data['name']}-{arch}"
    c = _mlflow(ws)
    version = c.get_model_version(name, "1")
    assert version.tags["eval.metric"] == "fid_300" and str(c.get_registered_model(name).aliases["champion"]) == "1"
    assert len(c.get_run(version.run_id).data.tags["ray.node_ids"].split(",")) == 2  # DDP, two workers
    if arch == "progan":
        resolutions = [m.value for m in c.get_metric_history(version.run_id, "train/resolution")]
        assert resolutions[0] < 16 and resolutions[-1] == 16  # the logged stage shows the growth

    model = f"models:/{name}@champion"
    s = ganpipe(ws, "sample", model, "--n", "9", "--out", str(tmp_path / "plain.png"), timeout=300)
    assert s.returncode == 0, s.stderr[-3000:]
    if arch != "stylegan":
        bad = ganpipe(ws, "sample", model, "--truncation", "0.7", "--out", str(tmp_path / "x.png"), timeout=300)
        assert bad.returncode != 0 and "need a style-based model" in bad.stderr
        return
    t = ganpipe(ws, "sample", model, "--n", "9", "--truncation", "0.5", "--out", str(tmp_path / "trunc.png"),
                timeout=300)
    assert t.returncode == 0, t.stderr[-3000:]
    assert _provenance(tmp_path / "trunc.png")["truncation"] == 0.5
    assert Image.open(tmp_path / "trunc.png").tobytes() != Image.open(tmp_path / "plain.png").tobytes()
    m = ganpipe(ws, "sample", model, "--mix", "--n", "9", "--layers", "2", "--out", str(tmp_path / "mix.png"),
                timeout=300)
    assert m.returncode == 0, m.stderr[-3000:]
    mix = _provenance(tmp_path / "mix.png")["mix"]
    assert mix["layers_from_row"] == 2 and len(mix["rows"]) == len(mix["cols"]) == 3
    w, h = Image.open(tmp_path / "mix.png").size
    assert w == h  # (3 + 1) x (3 + 1) cells: the header row and column hold the seeds' own images
    i = ganpipe(ws, "sample", model, "--interpolate", "7", "--steps", "6", "--out", str(tmp_path / "lerp.png"),
                timeout=300)
    assert i.returncode == 0 and _provenance(tmp_path / "lerp.png")["interpolate"] == [0, 7]
    bad = ganpipe(ws, "sample", model, "--mix", "--layers", "99", "--out", str(tmp_path / "x.png"), timeout=300)
    assert bad.returncode != 0 and "--layers: 99 must be in 1.." in bad.stderr
