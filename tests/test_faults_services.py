"""A service restarted under a running pipeline, on the real service.

The Prefect server killed (SIGKILL) while `ganpipe run` is training, and started again on the same
port and database: the flow run ends in a final state the server records (not left Running), the
command's exit code agrees with it, and a second `ganpipe run` resumes: nothing is trained again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from s3server import free_port
from workspace import BIN, env_for, make_workspace

pytestmark = pytest.mark.slow


class PrefectServer:
    """`prefect server start` as `ganpipe services` runs it; kill() and start() keep port and database."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.proc = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        with open(self.home / "server.log", "a") as log:
            self.proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                          str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def call(self, path: str, body: dict | None = None):
        req = urllib.request.Request(self.api + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def wait_healthy(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.call("/health")
                return
            except OSError:
                assert self.proc.poll() is None, (self.home / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"prefect server not healthy in {timeout_s} s"
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def flow_runs(self) -> list[dict]:
        return self.call("/flow_runs/filter", {"limit": 20, "sort": "START_TIME_ASC"})


@pytest.fixture
def prefect(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home)
    server.start()
    server.wait_healthy()
    yield server
    server.kill()


def wait_for(condition, what: str, proc: subprocess.Popen, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def test_a_prefect_server_restarted_mid_run_leaves_a_clear_state_and_a_rerun_resumes(tmp_path, prefect):
    ws = make_workspace(tmp_path)
    env = env_for(ws, PREFECT_API_URL=prefect.api)
    logs = {k: open(tmp_path / f"run.{k}", "w+") for k in ("out", "err")}  # files: a full pipe would block it
    run = subprocess.Popen([str(BIN / "ganpipe"), "run"], cwd=ws, env=env, stdout=logs["out"], stderr=logs["err"],
                           text=True, stdin=subprocess.DEVNULL)
    try:
        ray_results = ws / ".ganpipe" / "ray_results"
        wait_for(lambda: ray_results.is_dir() and any(ray_results.iterdir()), "training", run)
        prefect.kill()  # mid-training: the flow's next state change meets a dead server
        prefect.start()
        prefect.wait_healthy()
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    out, err = ((tmp_path / f"run.{k}").read_text() for k in ("out", "err"))
    (first,) = prefect.flow_runs()
    # a final state on the server that agrees with the command (Prefect's client retries a dead
    # server's requests for about a minute: a restart within that completes the run)
    assert first["state_type"] == "COMPLETED" and run.returncode == 0, (first["state_type"], err[-3000:])
    assert "model version:  ganpipe-digits-dcgan v1" in out

    again = subprocess.run([str(BIN / "ganpipe"), "run"], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=600, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "model version:  ganpipe-digits-dcgan v1" in again.stdout  # the same training run, not a new one
    assert "prepare:        skipped" in again.stdout
    runs = prefect.flow_runs()
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]


def test_a_lost_ray_cluster_is_named_with_where_the_checkpoints_are_kept():
    """The driver's message when the head goes away (measured: ActorUnavailableError 'Socket closed'
    within ~20 s of SIGKILLing the head's process group), versus a worker's own error."""
    from ray.exceptions import ActorUnavailableError

    from flows.stages.train import failure_message

    lost = ActorUnavailableError("RPC error: Socket closed", None)
    msg = failure_message(lost, "r1", "127.0.0.1:6379", "s3://ganpipe/ray")
    assert "the Ray cluster at 127.0.0.1:6379 stopped answering" in msg and "s3://ganpipe/ray/r1" in msg
    assert "Socket closed" in msg and "trigger the same run again" in msg
    own = failure_message(RuntimeError("boom"), "r1", "127.0.0.1:6379", "s3://ganpipe/ray")
    assert own == "Ray Train run 'r1' failed: RuntimeError: boom"
    assert "stopped answering" not in failure_message(lost, "r1", None, "/tmp/ray")  # a local instance: no cluster
