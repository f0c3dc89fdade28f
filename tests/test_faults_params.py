"""Bad parameters from the CLI or the Prefect UI form are refused before any work: the field named with
the reason, exit code 2 on the CLI, and nothing written (params.yaml, MLflow, DVC, Ray, Prefect)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from workspace import ROOT, ganpipe, make_workspace

# a catalogued dataset with one version, so "a known name with a missing version" can be asked for
TOY = {"latest": "v1", "versions": {"v1": {"kind": "labelled", "resolution": 16, "channels": 1, "count": 10,
                                           "content_sha256": "0" * 64}}}

# (overrides, field the error must name, words of the reason)
CLI_CASES = [
    pytest.param(["train.steps=-1"], "train.steps", "must be > 0, got -1", id="negative-steps"),
    pytest.param(["data.name=nope"], "data.name", "unknown dataset 'nope'", id="unknown-dataset"),
    pytest.param(["data.name=digits@v9"], "data.name", "built-in dataset 'digits' has no versions",
                 id="builtin-version"),
    pytest.param(["data.name=toy@v9"], "data.name", "dataset 'toy' has no version 'v9' (versions: v1)",
                 id="missing-version"),
    pytest.param(["data.name=../x"], "data.name", "'../x' must be NAME or NAME@vN", id="path-as-name"),
    pytest.param(["train.batch_size=33", "train.num_workers=2"], "train.batch_size",
                 "must be a positive multiple of train.num_workers=2, got 33", id="batch-not-divisible"),
    # was a YAML parser traceback with exit code 1
    pytest.param(["data.name=["], "data.name", "is not valid YAML", id="malformed-yaml"),
]


def add_toy_dataset(ws: Path, commit: bool) -> None:
    path = ws / "data" / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"toy": TOY}}))
    if commit:  # so `git status` stays a clean-workspace check
        git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
        subprocess.run(git + ["commit", "-qam", "toy dataset"], cwd=ws, check=True)


def side_effects(ws: Path, ray_tmp: Path) -> list[str]:
    """What a run that had started would have left behind."""
    home = ws / ".ganpipe"
    made = [p for p in (home / "mlflow.db", home / "prefect", home / "ray_results", ws / "data" / "prepared",
                        ws / "models" / "candidate", ws / "dvc.lock", ws / "reports", ray_tmp) if p.exists()]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True).stdout
    return [str(p) for p in made] + status.splitlines()


@pytest.mark.parametrize("overrides,field,reason", CLI_CASES)
def test_cli_refuses_bad_values_before_any_work(tmp_path, overrides, field, reason):
    ws = make_workspace(tmp_path)
    add_toy_dataset(ws, commit=True)
    params = (ws / "params.yaml").read_bytes()
    ray_tmp = tmp_path / "ray-tmp"  # Ray puts its sessions here (RAY_TMPDIR): immune to other Ray users
    out = ganpipe(ws, "run", *overrides, timeout=120, RAY_TMPDIR=str(ray_tmp))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stderr.startswith(f"error: {field}: "), out.stderr[-2000:]
    assert reason in out.stderr and "Traceback" not in out.stderr
    assert (ws / "params.yaml").read_bytes() == params
    assert side_effects(ws, ray_tmp) == []


# --- the Prefect UI form: the flow's schema, then the same config validation as the CLI

def _workspace(tmp: Path) -> Path:
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, tmp / f)
    (tmp / "data").mkdir()
    add_toy_dataset(tmp, commit=False)
    return tmp


FORM_CASES = [
    pytest.param({"dataset": "nope"}, None, "data.name", id="unknown-dataset"),
    pytest.param({"dataset": "digits@v9"}, None, "data.name", id="builtin-version"),
    pytest.param({"dataset": "toy@v9"}, None, "data.name", id="missing-version"),
    pytest.param({"dataset": "../x"}, None, "data.name", id="path-as-name"),
    pytest.param({"batch_size": 33, "workers": 2}, None, "train.batch_size", id="batch-not-divisible"),
    # the form's free-form overrides list
    pytest.param({}, ["train.steps=-1"], "train.steps", id="overrides-negative-steps"),
    pytest.param({}, ["data.name=["], "data.name", id="overrides-malformed-yaml"),
]


@pytest.mark.parametrize("form,overrides,field", FORM_CASES)
def test_form_values_are_refused_naming_the_field(tmp_path, form, overrides, field):
    from flows.ops.params import load_config
    from flows.stages.pipeline import form_settings
    from gan_core.config import ConfigError

    ws = _workspace(tmp_path)
    params = (ws / "params.yaml").read_bytes()
    with pytest.raises(ConfigError) as e:
        load_config(ws / "params.yaml", overrides or [], write=False, values=form_settings(form))
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")
    assert (ws / "params.yaml").read_bytes() == params


@pytest.mark.parametrize("values", [{"steps": -1}, {"steps": 0}, {"batch_size": -8}, {"workers": 0},
                                    {"fid_n": 1}, {"promotion_margin": -0.5}, {"arch": "nope"}],
                         ids=lambda v: "{}={}".format(*next(iter(v.items()))))
def test_flow_schema_refuses_out_of_range_form_values(values):
    """What Prefect checks before a flow run starts (a UI click, a deployment trigger)."""
    from prefect.exceptions import ParameterTypeError

    from flows.stages.pipeline import pipeline

    with pytest.raises(ParameterTypeError, match=rf"(?m)^ - {next(iter(values))}: "):
        pipeline.validate_parameters(values)


def test_flow_body_refuses_before_any_work(tmp_path, monkeypatch):
    """A run that got past the schema (valid types, invalid combination) fails in its first line."""
    from flows.stages.pipeline import pipeline
    from gan_core.config import ConfigError

    ws = _workspace(tmp_path)
    monkeypatch.setenv("GANPIPE_WORKSPACE", str(ws))
    monkeypatch.setenv("GANPIPE_HOME", str(ws / ".ganpipe"))
    with pytest.raises(ConfigError, match=r"^train\.batch_size: must be a positive multiple"):
        pipeline.fn(batch_size=33, workers=2)  # the flow body, without a Prefect server
    assert not (ws / ".ganpipe").exists() and not (ws / "dvc.lock").exists()
