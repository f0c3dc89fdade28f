"""The main job end to end, as a user runs it: `ganpipe run` (Prefect ephemeral API, local Ray,
MLflow on SQLite, local DVC remote) in an isolated workspace, twice. (The same stages via `dvc repro`:
test_text_families_e2e.)"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from terminal import run_in_pty
from workspace import BIN, ROOT, env_for, ganpipe, make_workspace

pytestmark = pytest.mark.slow
MODEL = "ganpipe-digits-dcgan"


def _dvc(ws, *args):
    return subprocess.run([str(BIN / "dvc"), *args], cwd=ws, env=env_for(ws), capture_output=True, text=True)


def _mlflow(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")


def test_run_twice_registers_gates_and_versions(tmp_path):
    ws = make_workspace(tmp_path)
    first = run_in_pty([str(BIN / "ganpipe"), "run"], ws, env_for(ws))  # at a terminal: stages, a bar, no logs
    assert first.returncode == 0, first.stdout[-3000:]
    out = first.stdout
    for i, stage in enumerate(["prepare", "train", "evaluate", "register"], 1):
        assert f"[{i}/4] {stage} ...\r\n" in out and re.search(rf"\[{i}/4\] {stage} done in \d", out), out[-3000:]
    steps = [int(n) for n in re.findall(r"\r\x1b\[K  \[[#-]+\] (\d+)/40 ", out)]  # the bar, redrawn in place
    assert len(set(steps)) >= 2 and steps == sorted(steps) and steps[-1] == 40, out[-3000:]
    assert not any(s in out for s in ("RayTrainWorker", "TrainController", "TrainingReport", "core_worker",
                                      "Finished in state", "INFO")), out[-3000:]
    log = Path(re.search(r"^log: (\S+)\r$", out, re.M)[1])
    text = log.read_text()
    assert log.parent == ws / ".ganpipe" / "logs" and "(RayTrainWorker pid=" in text and "\x1b" not in text
    assert "Flow run" in text and "Finished in state Completed()" in text
    assert "fid_300 (domain-classifier, lower is better):" in out and f"{MODEL} v1" in out
    assert "champion:       yes: first valid model" in out and "prepare:        ran" in out

    reg = json.loads((ws / "reports" / "registration.json").read_text())
    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    train = json.loads((ws / "models" / "candidate" / "train.json").read_text())
    manifest = json.loads((ws / "data" / "prepared" / "digits" / "manifest.json").read_text())
    assert reg["version"] == "1" and reg["champion"] and train["step"] == 40
    assert (ws / "reports" / "samples.png").is_file() and str(ws / "reports" / "samples.png") in out

    # DVC: workspace matches dvc.lock, and the remote received the objects
    st = _dvc(ws, "status", "--json")
    assert st.returncode == 0 and json.loads(st.stdout) == {}, st.stdout + st.stderr
    assert any((ws / ".ganpipe" / "dvc-remote").rglob("*"))
    assert _dvc(ws, "status", "--cloud", "-r", "ganpipe-local").stdout.strip().startswith(("Cache and remote", "Data and"))

    # MLflow: lineage tags, the metric curve, the champion loads and generates
    c = _mlflow(ws)
    v = c.get_model_version(MODEL, "1")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert v.tags["dataset.content_sha256"] == manifest["content_sha256"]
    assert v.tags["checkpoint.sha256"] == train["checkpoint_sha256"]
    assert v.tags["git.commit"].startswith(head)
    assert v.tags["ray.run_name"] == train["run_name"]
    assert v.tags["eval.fingerprint_id"] == ev["fingerprint"]["id"]
    assert v.tags["prefect.flow_run_id"] not in ("", "none")
    assert v.tags["train.determinism"].startswith("bit-exact: CPU")  # what a GPU run without the flag can't say
    assert v.tags["dataset.dvc_md5"].endswith(".dir") and v.tags["checkpoint.dvc_md5"].endswith(".dir")
    history = c.get_metric_history(train["mlflow_run_id"], "train/loss_d")
    assert [m.step for m in history] == [10, 20, 30, 40]
    assert c.get_run(train["mlflow_run_id"]).info.status == "FINISHED"
    curve = c.get_metric_history(train["mlflow_run_id"], "monitor/fid_100")  # the cheap in-training tier
    assert 20 in [m.step for m in curve] and all(m.value > 0 for m in curve)
    dvc_metrics = json.loads((ws / "reports" / "metrics.json").read_text())  # what `dvc metrics show` reads
    assert set(ev["metrics"]) <= set(dvc_metrics) and dvc_metrics["fid_300"] == round(ev["fid"], 6)
    assert dvc_metrics["step"] == 40 and 0 <= dvc_metrics["precision_300"] <= 1

    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")
    G = mlflow.pytorch.load_model(f"models:/{MODEL}@champion")
    images = G(torch.randn(5, 64))
    assert images.shape == (5, 1, 16, 16) and images.min() >= -1 and images.max() <= 1

    grid = ganpipe(ws, "sample", f"models:/{MODEL}@champion", "--n", "9", "--out", str(tmp_path / "g.png"))
    assert grid.returncode == 0, grid.stderr[-2000:]
    from gan_core.images import read_provenance
    from PIL import Image

    assert read_provenance(tmp_path / "g.png")["model"] == f"models:/{MODEL}@champion"
    side = (3 * (16 + 1) + 1) * 4  # 3x3 grid of 16 px images, 1 px padding, upscaled x4
    assert Image.open(tmp_path / "g.png").size == (side, side)

    # the run records its orchestration breakdown (MLflow timing/*), which benchmarks/orchestration.py reads
    sys.path.insert(0, str(ROOT))
    from benchmarks.orchestration import main as orchestration

    o = orchestration(["--workspace", str(ws), "--out", str(tmp_path / "bench")])
    assert {"ray_start", "ray_train_fit", "mlflow_run", "dvc", "evaluation", "flow_body"} <= set(o["recorded_s"])
    assert 0 < o["orchestration_s"] < o["wall_s"] and (tmp_path / "bench" / "orchestration.md").is_file()

    # second run: prepare skipped, a new candidate (with D's rotation pretext task), alias moves only if better
    second = ganpipe(ws, "run", "train.steps=80", "model.ssl=rotation")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "prepare:        skipped (unchanged)" in second.stdout
    assert "[2/4] train done in" in second.stderr and "\x1b" not in second.stderr + second.stdout  # no TTY: no bar
    assert re.search(r"^  \[#+\] 80/80 100%", second.stderr, re.M) and "Finished in state" not in second.stderr
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["steps"] == 80
    reg2 = json.loads((ws / "reports" / "registration.json").read_text())
    assert reg2["version"] == "2"
    fid1, fid2 = float(v.tags["eval.fid"]), float(reg2["fid"])
    champion = str(c.get_registered_model(MODEL).aliases["champion"])
    assert champion == ("2" if fid2 < fid1 else "1")
    v2 = c.get_model_version(MODEL, "2")
    assert v2.tags["promotion.reason"] == reg2["reason"]
    assert c.get_run(v2.run_id).data.params["model.ssl"] == "rotation"  # the option is in the lineage
    rotation = c.get_metric_history(v2.run_id, "train/rot_acc_real")  # and its head trained
    assert [m.step for m in rotation] == [10, 20, 30, 40, 50, 60, 70, 80] and all(0 <= m.value <= 1 for m in rotation)
    assert json.loads(_dvc(ws, "status", "--json").stdout) == {}


def test_a_conditional_family_runs_registers_and_samples_a_requested_class(tmp_path):
    ws = make_workspace(tmp_path)
    r = ganpipe(ws, "run", "model.arch=cgan")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    assert 0 <= ev["metrics"]["class_acc_300"] <= 1  # the conditional family's own metric
    train = json.loads((ws / "models" / "candidate" / "train.json").read_text())
    c = _mlflow(ws)
    assert c.get_metric_history(train["mlflow_run_id"], "class_acc_300")
    assert c.get_metric_history(train["mlflow_run_id"], "monitor/class_acc_100")

    import mlflow.pytorch
    import torch
    from mlflow.models import get_model_info

    uri = "models:/ganpipe-digits-cgan@champion"
    mlflow.set_tracking_uri(f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")
    info = get_model_info(uri)
    assert [i.name for i in info.signature.inputs.inputs] == ["z", "y"]
    assert info.metadata["latent"] == {"z_dim": 64, "n_classes": 10, "code_cat": 0, "code_cont": 0}
    G = mlflow.pytorch.load_model(uri)  # the pt2 program takes (z, y)
    assert G(torch.randn(3, 64), torch.tensor([0, 5, 9])).shape == (3, 1, 16, 16)

    out = tmp_path / "sevens.png"
    grid = ganpipe(ws, "sample", uri, "--n", "4", "--class", "7", "--out", str(out))
    assert grid.returncode == 0, grid.stderr[-2000:]
    from gan_core.images import read_provenance

    assert read_provenance(out)["class"] == 7
    bad = ganpipe(ws, "sample", uri, "--class", "10")
    assert bad.returncode != 0 and "--class: 10" in bad.stderr and "0..9" in bad.stderr

    # an autoencoder in the same workspace (the digits and their evaluator already prepared): its decoder
    # is registered as the generator (FID gate), its encoder beside it for `ganpipe encode`
    a = ganpipe(ws, "run", "model.arch=aae_mix")
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    ev = json.loads((ws / "reports" / "evaluation.json").read_text())
    assert ev["metric"] == "fid_300" and ev["metrics"]["recon_mse_train_500"] > 0  # digits: no held-out rows
    assert 0 < ev["metrics"]["mmd_p_train_500"] <= 1 and 0 <= ev["metrics"]["class_acc_300"] <= 1
    name = "ganpipe-digits-aae_mix"
    version = c.get_model_version(name, "1")
    assert version.tags["encoder.model_uri"].startswith("models:/")
    assert c.get_metric_history(version.run_id, "mmd_train_500")
    out = tmp_path / "codes.npy"
    enc = ganpipe(ws, "encode", f"models:/{name}@champion", str(ws / "data" / "prepared" / "digits" / "images.npy"),
                  "--out", str(out), "--show", "1")
    assert enc.returncode == 0, enc.stderr[-2000:]
    import numpy as np

    assert np.load(out).shape == (1797, 64) and "1797 codes of 64 dims" in enc.stdout
    assert json.loads(out.with_name("codes.npy.json").read_text())["model_version"] == "1"
    threes = ganpipe(ws, "sample", f"models:/{name}@champion", "--class", "3", "--n", "4",
                     "--out", str(tmp_path / "threes.png"))
    assert threes.returncode == 0 and read_provenance(tmp_path / "threes.png")["class"] == 3, threes.stderr[-2000:]


def test_bad_parameters_are_rejected_before_any_work(tmp_path):
    ws = make_workspace(tmp_path)
    before = (ws / "params.yaml").read_text()
    for args, field in [(["train.steps=-5"], "train.steps"), (["data.name=../x"], "data.name"),
                        (["train.batch_size=33"], "train.batch_size"), (["model.arch=nope"], "model.arch"),
                        (["model.loss=wasserstein"], "model.loss"), (["data.name=nope"], "data.name"),
                        (["train.stepz=1"], "train.stepz")]:
        r = ganpipe(ws, "run", *args, timeout=120)
        assert r.returncode != 0 and field in r.stderr, (args, r.stderr[-2000:])
    assert (ws / "params.yaml").read_text() == before
    assert not (ws / ".ganpipe" / "mlflow.db").exists() and not (ws / "data" / "prepared").exists()
