"""The MLflow server killed during training and before registration, on a real `mlflow server`.

A. Killed mid-run and started again on the same port and database: training never waits for it,
   and every step's metrics reach the run once it is back (none lost, none twice).
B. Killed and not back: training still ends; the metrics it could not send are dropped, counted
   and warned about; registration retries within its bound, then fails naming the server and where
   the checkpoint is kept, and the checkpoint is untouched.
"""
import logging
import os
import signal
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import blobs, tiny_config
from gan_core.batches import ShardedBatches
from gan_core.state import Callback
from gan_core.train import build_state, train
from s3server import BIN, free_port

pytestmark = pytest.mark.slow


class MlflowServer:
    """`mlflow server` as `ganpipe services` runs it (one worker, no job runner), on SQLite and a
    local artifact folder; kill() and start() again keep the port and the database."""

    def __init__(self, root):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts")]
        with open(self.root / "mlflow.log", "a") as log:  # its own process group: kill() takes its workers too
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self) -> bool:
        from flows.registry.tracking import check_reachable

        try:
            check_reachable(self.uri)
            return True
        except Exception:
            return False

    def wait_healthy(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            assert self.proc.poll() is None, (self.root / "mlflow.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"mlflow server not healthy in {timeout_s} s"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.kill()


@pytest.fixture
def run_id(server):
    """A fresh run on a server that is up (a test before may have left it dead)."""
    if not server.healthy():
        server.kill()
        server.start()
        server.wait_healthy()
    c = MlflowClient(server.uri)
    exp = c.get_experiment_by_name("faults") or c.get_experiment(c.create_experiment("faults"))
    return c.create_run(exp.experiment_id).info.run_id


def batches(cfg):
    return ShardedBatches({"images": torch.from_numpy(blobs(64)[0])}, cfg.train.per_worker_batch, 0, 1,
                          cfg.train.seed).from_step(0)


def idle(stream) -> bool:
    with stream.cond:
        return not stream.pending and not stream._in_flight


class Outage(Callback):
    """Kills the server at step `kill` (once the stream has sent everything: no request is cut in
    half), starts it again at `restart`, and at `wait` holds training until it answers."""

    def __init__(self, server, stream, kill=5, restart=12, wait=20):
        self.server, self.stream, self.steps = server, stream, (kill, restart, wait)
        self.down_s = None

    def on_step(self, state):
        kill, restart, wait = self.steps
        if state.step == kill:
            deadline = time.monotonic() + 60
            while not idle(self.stream):
                assert time.monotonic() < deadline, "the stream never caught up with a healthy server"
                time.sleep(0.05)
            self.server.kill()
            self.t0 = time.perf_counter()
        elif state.step == restart:
            self.down_s = time.perf_counter() - self.t0  # steps kill+1..restart, all logged to a dead server
            self.server.start()
        elif state.step == wait:
            self.server.wait_healthy()


class Counted(Callback):
    def __init__(self):
        self.values = 0

    def on_log(self, state, metrics):
        self.values += len(metrics) + 1  # MlflowMetrics adds images_seen


def test_training_goes_on_while_mlflow_is_down_and_its_metrics_arrive_when_it_returns(server, run_id):
    from flows.registry.tracking import MlflowMetrics

    cfg = tiny_config(train={"steps": 30, "log_every": 1, "checkpoint_every": 30})
    metrics = MlflowMetrics(server.uri, run_id)
    outage = Outage(server, metrics.stream)
    train(build_state(cfg), batches(cfg), cfg, [metrics, outage])

    # without the stream, the first log to the dead server blocked the loop for ~4 minutes
    assert outage.down_s < 10, f"7 steps with MLflow down took {outage.down_s:.1f} s: the loop waited for it"
    assert metrics.stream.outages == 1 and metrics.stream.dropped == 0
    history = MlflowClient(server.uri).get_metric_history(run_id, "train/loss_d")
    assert [m.step for m in history] == list(range(1, 31))  # every step, each once, in order


def test_metrics_are_dropped_with_a_count_and_registration_fails_within_its_bound(server, run_id, tmp_path,
                                                                                   caplog):
    from flows.stages.register import REGISTER_ATTEMPTS, RegistryUnavailable, register
    from flows.ops.settings import load_settings
    from flows.registry.tracking import MetricStream, MlflowMetrics
    from flows.stages.train import publish_candidate
    from gan_core.checkpoint import load_checkpoint, rng_state, save_checkpoint, to_checkpoint

    server.kill()
    cfg = tiny_config(train={"steps": 6, "log_every": 1, "checkpoint_every": 6})
    metrics = MlflowMetrics(server.uri, run_id, stream=MetricStream(server.uri, run_id, flush_timeout_s=1))
    logged = Counted()
    with caplog.at_level(logging.WARNING, logger="flows.registry.tracking"):
        state = train(build_state(cfg), batches(cfg), cfg, [logged, metrics])
    assert metrics.stream.sent == 0 and metrics.stream.dropped == logged.values > 0
    assert f"{metrics.stream.dropped} metric values for MLflow run {run_id} were not logged" in caplog.text

    # a candidate as the train stage leaves it, then registration against the dead server
    ckpt = tmp_path / "ray" / "checkpoint.pt"
    save_checkpoint(ckpt, to_checkpoint(state, cfg, [rng_state()]))
    settings = load_settings({"GANPIPE_WORKSPACE": str(tmp_path / "ws"), "GANPIPE_HOME": str(tmp_path / "home"),
                              "MLFLOW_TRACKING_URI": server.uri})
    published = publish_candidate(settings, ckpt, load_checkpoint(ckpt), "run", run_id, str(ckpt.parent))
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable) as e:
        register(settings, cfg, {})
    took = time.monotonic() - t0
    assert took < 30, f"registration gave up after {took:.0f} s"
    msg = str(e.value)
    assert f"at MLflow {server.uri}: failed {REGISTER_ATTEMPTS} attempts" in msg and "Connection refused" in msg
    assert f"{settings.candidate_dir / 'checkpoint.pt'}" in msg and str(ckpt.parent) in msg
    assert load_checkpoint(settings.candidate_dir / "checkpoint.pt")["step"] == 6
    assert load_checkpoint(ckpt)["step"] == 6 and published["checkpoint_sha256"][:12] in msg
