"""Deployments, the run form, the run summary, the services profile: the parts that need no server."""
import json
import threading
import time

import pytest

from flows.ops.deployments import CONCURRENCY, DeployConfig, deployments
from flows.ops.locks import file_lock
from flows.stages.pipeline import FORM, form_settings, pipeline
from flows.ops.settings import SettingsError, load_settings, read_env_file
from flows.stages.summary import mlflow_links, run_summary, skip_summary
from gan_core.config import ConfigError
from infra.config import ServicesConfig


def test_deployments_file_is_validated_naming_the_field(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("retrain: {cron: '*/5 * * * *', parameters: {arch: wgan}}\n")
    cfg = DeployConfig.load(f)
    assert cfg.cron == "*/5 * * * *" and cfg.retrain_parameters == {"arch": "wgan"}
    assert DeployConfig.load(f, cron="0 1 * * *").cron == "0 1 * * *"
    f.write_text("retrain: {cron: 'every night'}\n")
    with pytest.raises(ConfigError, match="retrain.cron"):
        DeployConfig.load(f)
    f.write_text("retrain: {parameters: {stepz: 3}}\n")
    with pytest.raises(ConfigError, match=r"retrain.parameters.*stepz"):
        DeployConfig.load(f)


def test_two_deployments_with_a_cron_schedule_and_concurrency_one():
    scheduled, on_demand = deployments(DeployConfig(cron="15 2 * * *"))
    assert scheduled.schedules[0].schedule.cron == "15 2 * * *"
    assert not on_demand.schedules
    for d in (scheduled, on_demand):
        limit = d.concurrency_limit
        assert (limit if isinstance(limit, int) else limit.limit) == CONCURRENCY == 1
        assert d.enforce_parameter_schema  # the server refuses a bad form before a run exists


def test_the_run_form_is_typed_and_validated():
    props = pipeline.parameters.model_dump()["properties"]
    assert set(FORM) <= set(props)
    kinds = {k: [t.get("type") for t in v["anyOf"] if t.get("type") != "null"][0] for k, v in props.items()}
    assert kinds["steps"] == kinds["batch_size"] == kinds["workers"] == kinds["fid_n"] == "integer"
    assert kinds["use_gpu"] == "boolean" and kinds["promotion_margin"] == "number" and kinds["dataset"] == "string"
    steps = [t for t in props["steps"]["anyOf"] if t.get("type") == "integer"][0]
    assert steps["exclusiveMinimum"] == 0
    arch = [t for t in props["arch"]["anyOf"] if "enum" in t][0]
    assert "dcgan" in arch["enum"] and "wgan_gp" in arch["enum"]
    assert all(props[k].get("description") for k in FORM)  # help text under each field in the UI


def test_form_values_become_typed_settings():
    out = form_settings({"steps": 30, "use_gpu": False, "arch": None, "dataset": "pets@v2", "promotion_margin": 1e-05})
    assert out == [(("train", "steps"), 30), (("train", "use_gpu"), False), (("data", "name"), "pets@v2"),
                   (("register", "promotion_margin"), 1e-05)]
    assert [type(v) for _, v in out] == [int, bool, str, float]  # never re-read from text: 1e-05 stays a number


def test_markdown_summary_links_to_the_mlflow_server():
    links = mlflow_links("http://127.0.0.1:5000/", "3", "abc", "ganpipe-digits-dcgan", "7")
    assert links == {"run": "http://127.0.0.1:5000/#/experiments/3/runs/abc",
                     "model": "http://127.0.0.1:5000/#/models/ganpipe-digits-dcgan/versions/7"}
    assert mlflow_links("sqlite:///x.db", "3", "abc", "m", "7") == {"run": "runs:/abc", "model": "models:/m/7"}
    cfg = {"data": {"name": "digits"}, "model": {"arch": "dcgan", "loss": "nonsat"}, "train": {"num_workers": 2}}
    training = {"meta": {"dataset_sha256": "d" * 64, "params_sha256": "p" * 64, "git_commit": "c0ffee"},
                "step": 40, "images_seen": 1280, "run_name": "r1"}
    evaluation = {"metric": "fid_300", "higher_is_better": False, "metrics": {"fid_300": 12.5, "kid_300": 0.25},
                  "fingerprint": {"id": "fp1", "backbone": "b", "n_fake": 300}}
    reg = {"model_name": "ganpipe-digits-dcgan", "version": "7", "champion": True, "reason": "first valid model"}
    md = run_summary(cfg, training, evaluation, reg, links)
    assert "v7: **promoted to champion**" in md and "first valid model" in md
    assert "| fid_300 | 12.5000 |" in md and "`fp1`" in md and links["model"] in md and links["run"] in md
    assert "Gate: `fid_300`, lower is better" in md
    md = run_summary(cfg, training, {**evaluation, "metric": "psnr_200", "higher_is_better": True}, reg, links)
    assert "Gate: `psnr_200`, higher is better" in md
    assert "unchanged" in skip_summary("m", "unchanged since v1")


def test_env_file_profile_fills_what_the_environment_lacks(tmp_path):
    f = tmp_path / "g.env"
    f.write_text("# comment\nMLFLOW_TRACKING_URI=http://127.0.0.1:5000\nexport RAY_ADDRESS='127.0.0.1:6379'\n"
                 "GANPIPE_RAY_STORAGE=s3://b/ray\n")
    assert read_env_file(f)["RAY_ADDRESS"] == "127.0.0.1:6379"
    env = {"GANPIPE_WORKSPACE": str(tmp_path), "GANPIPE_ENV_FILE": str(f), "RAY_ADDRESS": "10.0.0.1:6379"}
    s = load_settings(env)
    assert s.mlflow_uri == "http://127.0.0.1:5000" and s.ray_storage == "s3://b/ray"
    assert s.ray_address == "10.0.0.1:6379"  # the environment itself wins over the file
    f.write_text("this is not a setting\n")
    with pytest.raises(SettingsError, match=r"g.env:1: expected KEY=VALUE"):
        load_settings(env)
    with pytest.raises(SettingsError, match="GANPIPE_ENV_FILE: cannot read"):
        load_settings({**env, "GANPIPE_ENV_FILE": str(tmp_path / "missing.env")})


def test_services_ports_are_checked(tmp_path):
    cfg = ServicesConfig.from_env(tmp_path, {"GANPIPE_MLFLOW_PORT": "5311"})
    assert cfg.mlflow_port == 5311 and cfg.backend_uri.startswith("sqlite:///") and cfg.endpoint.endswith(":9000")
    with pytest.raises(ValueError, match="GANPIPE_S3_PORT: expected a TCP port"):
        ServicesConfig.from_env(tmp_path, {"GANPIPE_S3_PORT": "70000"})


def test_workspace_lock_makes_the_second_run_wait(tmp_path):
    lock, events, waited = tmp_path / "w.lock", [], []

    def second():
        with file_lock(lock, "run B", on_wait=waited.append):
            events.append("B in")

    with file_lock(lock, "run A"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        events.append("A out")
    t.join(10)
    assert events == ["A out", "B in"] and waited == ["run A"]
    assert json.dumps(lock.read_text()) == json.dumps("run B")


def test_retraining_finds_a_version_trained_from_the_same_inputs(tmp_path):
    from flows.registry.tracking import CHAMPION, client, trained_from_same_inputs

    c = client(f"sqlite:///{tmp_path}/m.db")
    c.create_registered_model("m")
    same = {"dataset.content_sha256": "d1", "params.sha256": "p1", "git.commit": "c1"}
    c.create_model_version("m", str(tmp_path), tags=same)  # v1: the champion
    c.create_model_version("m", str(tmp_path), tags={**same, "params.sha256": "p2"})  # v2: lost to it
    c.set_registered_model_alias("m", CHAMPION, "1")
    v, champ = trained_from_same_inputs(c, "m", same)
    assert (str(v.version), champ) == ("1", True)
    v, champ = trained_from_same_inputs(c, "m", {**same, "params.sha256": "p2"})
    assert (str(v.version), champ) == ("2", False)
    assert trained_from_same_inputs(c, "m", {**same, "git.commit": "c2"}) is None  # new code: retrain
    assert trained_from_same_inputs(c, "unknown", same) is None


def test_uris_shown_or_handed_on_carry_no_password():
    from flows.ops.settings import without_password

    assert without_password("https://ann:s3cret@mlflow.example.com/x") == "https://mlflow.example.com/x"
    assert without_password("sqlite:///a/b.db") == "sqlite:///a/b.db"
    links = mlflow_links("https://ann:s3cret@mlflow.example.com", "1", "r", "m", "2")
    assert all("s3cret" not in v for v in links.values())
