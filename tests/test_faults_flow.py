"""Faults at the level a night-time user meets them: `ganpipe run` (Prefect flow, local Ray, MLflow on
SQLite, DVC) in one throwaway workspace, faults injected through the code's own seams
(GANPIPE_FAULT_AT, GANPIPE_FAULT_EVAL) and by killing the driver process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from workspace import BIN, env_for, ganpipe, make_workspace

pytestmark = pytest.mark.slow
MODEL = "ganpipe-digits-dcgan"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("faults"))


def _mlflow(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{ws / '.ganpipe' / 'mlflow.db'}")


def _versions(ws) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return _mlflow(ws).search_model_versions(f"name='{MODEL}'")
    except MlflowException:
        return []


def _champion(ws) -> str | None:
    return _mlflow(ws).get_registered_model(MODEL).aliases.get("champion")


def _out(r: subprocess.CompletedProcess) -> str:
    log = re.search(r"^log: (\S+)$", r.stderr, re.M)  # Prefect's and Ray's own lines go to the run's log file
    return r.stdout + r.stderr + (Path(log[1]).read_text() if log else "")


def test_driver_killed_mid_training_then_retriggered_resumes_and_registers_once(ws):
    env = env_for(ws, GANPIPE_FAULT_AT="25:0:stall")  # rank 0 hangs after step 25 (checkpoint at 20)
    log = open(ws / "crash.log", "w")
    driver = subprocess.Popen([str(BIN / "ganpipe"), "run"], cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    faults = ws / ".ganpipe" / "faults"
    # generous: prepare, Ray's start and 25 steps passed the old 300 s bound in a fresh-clone CI run on
    # a 2-core machine running two other pipelines; and whatever happens, the driver's group goes, or
    # its hung workers would hold the workspace lock and fail every later test of this module
    deadline = time.time() + 900
    try:
        while not list(faults.glob("*.fired")):
            assert driver.poll() is None and time.time() < deadline, (ws / "crash.log").read_text()[-3000:]
            time.sleep(1)
        driver.send_signal(signal.SIGKILL)  # the flow process dies mid-training
        driver.wait(30)
        time.sleep(5)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the harness clears the hung workers the crash left behind
        except ProcessLookupError:
            pass
        driver.wait(30)
        log.close()
    run_name = next(faults.glob("*.fired")).stem
    assert _versions(ws) == []

    again = ganpipe(ws, "run")  # re-triggered with the same inputs
    assert again.returncode == 0, _out(again)[-4000:]
    assert "prepare:        skipped (unchanged)" in again.stdout  # prepare finished before the crash
    train = json.loads((ws / "models" / "candidate" / "train.json").read_text())
    from gan_core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ws / "models" / "candidate" / "checkpoint.pt")
    assert train["run_name"] == run_name and ckpt["extra"]["resumed_at"] == [20] and ckpt["step"] == 40
    assert [v.version for v in _versions(ws)] == [1]  # exactly one model version
    c = _mlflow(ws)
    runs = c.search_runs([c.get_experiment_by_name("ganpipe-digits").experiment_id],
                         filter_string=f"tags.`ray.run_name` = '{run_name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the crashed run's MLflow run, reopened
    assert [m.step for m in c.get_metric_history(runs[0].info.run_id, "train/loss_d")] == [10, 20, 30, 40]

    third = ganpipe(ws, "run")  # nothing changed: the finished run hands back its checkpoint
    assert third.returncode == 0, _out(third)[-4000:]
    assert f"{MODEL} v1" in third.stdout and [v.version for v in _versions(ws)] == [1]  # idempotent


def test_a_transient_evaluation_failure_retries_evaluation_only(ws):
    before = len(_versions(ws))
    r = ganpipe(ws, "run", "train.seed=3", GANPIPE_FAULT_EVAL="1")
    assert r.returncode == 0, _out(r)[-4000:]
    out = _out(r)
    assert "injected transient evaluation failure 1/1" in out and "Retry 1/2" in out
    assert out.count("train: ganpipe-digits-dcgan-") == 1  # training ran once
    assert len(_versions(ws)) == before + 1


def test_an_exhausted_failure_budget_fails_the_flow_with_its_root_cause(ws):
    before, champion = len(_versions(ws)), _champion(ws)
    r = ganpipe(ws, "run", "train.seed=4", "train.max_failures=1", GANPIPE_FAULT_AT="5:0:always")
    assert r.returncode != 0
    out = _out(r)
    assert "injected fault (always) at step" in out  # the root cause, not just "training failed"
    assert "error: pipeline failed" in r.stderr and "Finished in state Failed" in out
    assert len(_versions(ws)) == before and _champion(ws) == champion


def test_divergence_fails_the_flow_with_no_retry_and_nothing_registered(ws):
    before, champion = len(_versions(ws)), _champion(ws)
    r = ganpipe(ws, "run", "train.seed=5", GANPIPE_FAULT_AT="25:1:nan")
    assert r.returncode != 0
    out = _out(r)
    # NaN from step 26 on; the run stops at the next log/checkpoint step and names step 26
    assert "diverged at or before step" in out and "at step 26)" in out and "DivergedError" in r.stderr
    assert "Retry" not in out
    assert len(_versions(ws)) == before and _champion(ws) == champion
