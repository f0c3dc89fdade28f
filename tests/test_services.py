"""The pipeline against real services on 127.0.0.1, started and stopped by `ganpipe services`:
moto S3, an MLflow server, a Prefect server, a Ray head and a Ray worker node; then `ganpipe serve`
with its two deployments, triggered through the Prefect API and from the Prefect UI in Chromium."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3server import free_port
from workspace import BIN, env_for, make_workspace

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
MODEL = "ganpipe-digits-dcgan"


@dataclass
class Stack:
    ws: Path
    env: dict[str, str]  # what a user has after `export GANPIPE_ENV_FILE=...`
    values: dict[str, str]  # the env file's settings

    def ganpipe(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ganpipe"), *args], cwd=self.ws, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def prefect_api(self, *args: str, timeout: int = 600) -> dict:
        # a plain Prefect client reads PREFECT_API_URL, not ganpipe's env file
        out = subprocess.run([sys.executable, str(HERE / "prefect_api.py"), *args], cwd=self.ws,
                             env={**self.env, **self.values},
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def s3_keys(self) -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.values["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=self.values["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.values["AWS_SECRET_ACCESS_KEY"])
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="ganpipe")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.values["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("services"))
    ports = {f"GANPIPE_{n}_PORT": str(free_port()) for n in ("PREFECT", "MLFLOW", "S3", "RAY", "RAY_DASHBOARD",
                                                              "RAY_CLIENT")}
    base = env_for(ws, **ports, GANPIPE_RAY_NODE_CPUS="1")
    up = subprocess.run([str(BIN / "ganpipe"), "services", "up"], cwd=ws, env=base, capture_output=True, text=True,
                        timeout=600)
    home = ws / ".ganpipe" / "services"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env_file = home / "ganpipe.env"
        from flows.ops.settings import read_env_file

        yield Stack(ws, {**base, "GANPIPE_ENV_FILE": str(env_file)}, read_env_file(env_file))
    finally:
        down = subprocess.run([str(BIN / "ganpipe"), "services", "down"], cwd=ws, env=base, capture_output=True,
                              text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        for pid_file in home.glob("*.pid"):  # down removes a pid file only once its process group is gone
            pytest.fail(f"{pid_file} left behind: {pid_file.read_text()}")
        marker = Path("/tmp/ray/ray_current_cluster")  # else a later plain ray.init() joins the dead cluster
        assert not (marker.exists() and marker.read_text().strip().endswith(":" + ports["GANPIPE_RAY_PORT"]))


def test_services_are_up_healthy_and_their_settings_private(stack):
    st = stack.ganpipe("services", "status", "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    rows = {r["name"]: r for r in json.loads(st.stdout)}
    assert set(rows) == {"s3", "mlflow", "prefect", "ray-head", "ray-worker"}
    assert all(r["state"] == "healthy" and r["pid"] for r in rows.values())
    assert all(Path(r["log"]).is_file() for r in rows.values())
    env_file = Path(stack.env["GANPIPE_ENV_FILE"])
    assert env_file.stat().st_mode & 0o777 == 0o600  # it holds the S3 credentials
    assert len(stack.values["AWS_SECRET_ACCESS_KEY"]) >= 30 and stack.values["AWS_SECRET_ACCESS_KEY"] != "testing"
    assert urllib.request.urlopen(stack.values["MLFLOW_TRACKING_URI"] + "/health", timeout=5).status == 200
    again = stack.ganpipe("services", "up")  # idempotent: nothing restarted
    assert again.returncode == 0 and again.stdout.count("already running") == 5, again.stdout


def _alive_ray_nodes(stack) -> set[str]:
    port = stack.env["GANPIPE_RAY_DASHBOARD_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/nodes?limit=100", timeout=10) as r:
        nodes = json.load(r)["data"]["result"]["result"]
    return {n["node_id"] for n in nodes if n["state"] == "ALIVE"}


def test_the_pipeline_runs_on_the_services(stack):
    run = stack.ganpipe("run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    c = stack.mlflow()
    v = c.get_model_version(MODEL, "1")  # in the MLflow server's registry
    assert c.get_model_version_by_alias(MODEL, "champion").version == v.version
    training = c.get_run(v.run_id)
    # Ray Train used both nodes: the two ranks ran on two distinct nodes of this cluster
    ranks = training.data.tags["ray.node_ids"].split(",")
    assert len(ranks) == 2 and len(set(ranks)) == 2 and set(ranks) <= _alive_ray_nodes(stack)
    keys = stack.s3_keys()
    run_name = v.tags["ray.run_name"]
    assert any(k.startswith(f"ray/{run_name}/checkpoint_") for k in keys)  # Ray's run storage is the bucket
    assert any(k.startswith("dvc/files/md5/") for k in keys)  # DVC pushed dataset + checkpoint
    assert any(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys)  # MLflow artifacts
    assert any(k.startswith("mlflow/") and k.endswith("checkpoint.pt") for k in keys)
    assert any("/samples/" in k for k in keys)  # sample grids for the MLflow UI
    home = stack.ws / ".ganpipe"
    assert not (home / "ray_results").exists() and not (home / "mlartifacts").exists() and not (home / "mlflow.db").exists()
    assert "train/loss_d" in training.data.metrics and "monitor/fid_100" in training.data.metrics


@pytest.fixture(scope="module")
def served(stack):
    """`ganpipe serve` in the workspace: the deployments, and the process that runs their flow runs."""
    log = open(stack.ws / "serve.log", "w")
    proc = subprocess.Popen([str(BIN / "ganpipe"), "serve"], cwd=stack.ws, env=stack.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(stack.prefect_api("deployments")["deployments"]) < 2:
            assert proc.poll() is None and time.time() < deadline, (stack.ws / "serve.log").read_text()[-3000:]
            time.sleep(2)
        yield stack
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # measured: serve can sit on SIGTERM for over 20 s
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def test_scheduled_retrain_triggered_through_the_api_skips_unchanged_inputs(served):
    assert set(served.prefect_api("deployments")["deployments"]) == {"ganpipe-retrain/scheduled-retrain",
                                                                      "ganpipe-pipeline/on-demand"}
    versions_before = len(served.mlflow().search_model_versions(f"name='{MODEL}'"))
    # `ganpipe run` above trained v1 from this dataset, params and committed code: nothing to retrain
    skipped = served.prefect_api("trigger", "ganpipe-retrain/scheduled-retrain")["runs"][0]
    assert skipped["state"] == "Completed", skipped
    summary = skipped["artifacts"][0]
    assert "retraining skipped" in summary["data"] and "unchanged since v1, the champion" in summary["data"]
    assert len(served.mlflow().search_model_versions(f"name='{MODEL}'")) == versions_before
    # forced: the pipeline runs, but a run is named by its inputs, so the finished training run hands
    # back its checkpoint and registration returns the same version (training is deterministic)
    forced = served.prefect_api("trigger", "ganpipe-retrain/scheduled-retrain", json.dumps({"force": True}))["runs"][0]
    assert forced["state"] == "Completed", forced
    assert len(served.mlflow().search_model_versions(f"name='{MODEL}'")) == versions_before
    md = forced["artifacts"][0]["data"]
    assert f"{MODEL} v1" in md and "| fid_300 |" in md
    assert f"{served.values['MLFLOW_TRACKING_URI']}/#/models/{MODEL}/versions/1" in md


def test_a_second_trigger_is_queued_not_run_in_parallel(served):
    before = len(served.mlflow().search_model_versions(f"name='{MODEL}'"))
    out = served.prefect_api("trigger", "ganpipe-pipeline/on-demand", json.dumps({"steps": 20}), "2")
    first, second = out["runs"]
    assert first["state"] == second["state"] == "Completed", out
    assert not out["overlap"]  # polled every 0.5 s: never both Running
    assert "AwaitingConcurrencySlot" in first["history"] + second["history"]
    assert first["parameters"] == second["parameters"] == {"steps": 20}
    versions = served.mlflow().search_model_versions(f"name='{MODEL}'")
    assert len(versions) == before + 1  # the queued run had the same inputs: it got the first one's version
    assert max(versions, key=lambda v: int(v.version)).tags["checkpoint.step"] == "20"
    # a deployment run is a one-off: params.yaml still says what it said
    assert "steps: 40" in (served.ws / "params.yaml").read_text()


def test_the_prefect_ui_starts_a_custom_run_and_the_mlflow_ui_shows_its_model(served, tmp_path):
    """Headless Chromium: Deployments -> on-demand -> Run -> Custom run with steps=25 and an arch from
    the drop-down; the run page reaches Completed; the MLflow UI lists the version it registered."""
    from browser import chrome, open_mlflow_model, start_custom_run, wait_flow_run_state_in_ui

    ui, mlflow_ui = f"http://127.0.0.1:{served.env['GANPIPE_PREFECT_PORT']}", served.values["MLFLOW_TRACKING_URI"]
    driver = chrome()
    try:
        run_id = start_custom_run(driver, ui, "ganpipe-pipeline", "on-demand", {"steps": 25, "arch": "dcgan"},
                                  artifacts_dir=tmp_path)
        wait_flow_run_state_in_ui(driver, ui, run_id, "Completed", timeout=480, artifacts_dir=tmp_path)
        run = served.prefect_api("run", run_id)
        # the UI sends every field; the untouched ones as None (params.yaml's value)
        assert {k: v for k, v in run["parameters"].items() if v is not None} == {"steps": 25, "arch": "dcgan"}, run
        newest = max(served.mlflow().search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
        assert newest.tags["checkpoint.step"] == "25" and newest.tags["prefect.flow_run_id"] == run_id
        page = open_mlflow_model(driver, mlflow_ui, MODEL, artifacts_dir=tmp_path)
        assert MODEL in page and f"Version {newest.version}" in page
    finally:
        driver.quit()
