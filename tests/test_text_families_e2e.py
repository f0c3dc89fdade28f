"""Text-to-image through the whole pipeline, as a user runs it:
`dvc repro` of stackgan on the built-in captioned shapes (prepare with its attribute classifier, Ray
Train DDP on two workers across the Stage I -> II change, the FID gate with text alignment beside it,
MLflow registration; a second `dvc repro` skips all four), then `ganpipe sample --text` of the registered
champion. (`model.ssl=rotation`
goes through the pipeline in test_pipeline_e2e's second run.)"""
import json
import subprocess

import pytest
import yaml

from workspace import BIN, TINY, env_for, ganpipe, make_workspace

pytestmark = pytest.mark.slow
NAME = "ganpipe-captions-stackgan"


def _mlflow(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")


def test_stackgan_through_dvc_repro_then_sampled_from_text(tmp_path):
    from gan_core.checkpoint import load_checkpoint
    from gan_core.images import read_provenance

    # 40 steps, Stage I for the first 20 (the default half): the checkpoint at 20 is the stage boundary
    ws = make_workspace(tmp_path, {**TINY, "data": {"name": "captions"}, "model": {"arch": "stackgan"}})
    r = subprocess.run([str(BIN / "dvc"), "repro"], cwd=ws, env=env_for(ws), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert set(yaml.safe_load((ws / "dvc.lock").read_text())["stages"]) == {"prepare", "train", "evaluate", "register"}

    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    assert ev["metric"] == "fid_300" and ev["higher_is_better"] is False and ev["value"] > 0
    m = ev["metrics"]
    assert 0 <= m["alignment_300"] <= 1 and m["alignment_300_chance"] == pytest.approx(0.3125)
    ckpt = load_checkpoint(ws / "models" / "candidate" / "checkpoint.pt")
    assert ckpt["step"] == 40 and ckpt["world"] == 2 and ckpt["extra"]["stage"] == 2

    c = _mlflow(ws)
    version = c.get_model_version(NAME, "1")
    assert str(c.get_registered_model(NAME).aliases["champion"]) == "1"
    assert version.tags["eval.metric"] == "fid_300" and version.tags["dataset.name"] == "captions"
    assert version.tags["prefect.flow_run_id"].startswith("none")  # dvc repro runs the stages without Prefect
    reg = json.loads((ws / "reports" / "registration.json").read_text())
    assert reg["version"] == "1" and reg["champion"]
    assert len(c.get_run(version.run_id).data.tags["ray.node_ids"].split(",")) == 2  # DDP, two workers
    assert c.get_metric_history(version.run_id, "monitor/alignment_100")  # scored while training too

    model = f"models:/{NAME}@champion"
    out = tmp_path / "blue.png"
    s = ganpipe(ws, "sample", model, "--text", "a large blue square", "--n", "4", "--out", str(out), timeout=300)
    assert s.returncode == 0, s.stderr[-3000:]
    p = read_provenance(out)
    assert p["text"] == "a large blue square" and p["unknown_words"] == [] and p["model_version"] == "1"
    odd = ganpipe(ws, "sample", model, "--text", "a purple square", "--n", "1", "--out", str(tmp_path / "p.png"))
    assert odd.returncode == 0 and read_provenance(tmp_path / "p.png")["unknown_words"] == ["purple"], odd.stderr
    bad = ganpipe(ws, "sample", model, "--text", "!!", "--out", str(tmp_path / "x.png"))
    assert bad.returncode != 0 and "--text" in bad.stderr and not (tmp_path / "x.png").exists()

    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=ws, env=env_for(ws), capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("didn't change, skipping") == 4, again.stdout

