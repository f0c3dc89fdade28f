"""The local S3 store of `ganpipe services` keeps its data: after `services down` + `up`, and after the
store is SIGKILLed (mid-write), every object is still there and whole, so a Ray run resumes from its S3
checkpoint, `dvc pull` restores every version and every registered model loads from the MLflow registry.

The tests share one stack and run in order: a run killed after its first S3 checkpoint, down + up, the
killed run resumed (v1), the store SIGKILLed during a PUT, then every version pulled and loaded."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from s3server import free_port
from workspace import BIN, env_for, make_workspace

MODEL = "ganpipe-digits-dcgan"
RESUMED_STEPS = "train.steps=100"  # checkpoints every 20 (TINY): killed after the first, resumed after the restart


@dataclass
class Stack:
    ws: Path
    base: dict[str, str]  # the environment `ganpipe services` runs with
    data: Path  # the store's folder
    values: dict[str, str] = field(default_factory=dict)  # the env file's settings
    commits: dict[str, str] = field(default_factory=dict)  # model version -> git commit of its dvc.lock
    killed_run: str = ""

    @property
    def env(self) -> dict[str, str]:  # what a user has after `export GANPIPE_ENV_FILE=...`
        return {**self.base, "GANPIPE_ENV_FILE": str(self.ws / ".ganpipe" / "services" / "ganpipe.env")}

    def ganpipe(self, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ganpipe"), *args], cwd=self.ws, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def services(self, *args: str) -> subprocess.CompletedProcess:
        out = self.ganpipe("services", *args, env=self.base)
        from flows.ops.settings import read_env_file

        env_file = Path(self.env["GANPIPE_ENV_FILE"])
        if env_file.exists():
            self.values = read_env_file(env_file)
        return out

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.values["AWS_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=self.values["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.values["AWS_SECRET_ACCESS_KEY"])

    def objects(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        """key -> (size, ETag) of everything in the bucket."""
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket="ganpipe", Prefix=prefix)
        return {o["Key"]: (o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])}

    def commit(self, version: str) -> None:
        git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
        subprocess.run(git + ["add", "-A"], cwd=self.ws, check=True)
        subprocess.run(git + ["commit", "-qm", f"v{version}"], cwd=self.ws, check=True)
        self.commits[version] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.ws, check=True,
                                               capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def running_stack(ws: Path):
    """`ganpipe services up` for the workspace on free ports, and `down` whatever happens."""
    ports = {f"GANPIPE_{n}_PORT": str(free_port()) for n in ("PREFECT", "MLFLOW", "S3", "RAY", "RAY_DASHBOARD",
                                                              "RAY_CLIENT")}
    st = Stack(ws, env_for(ws, **ports, GANPIPE_RAY_NODE_CPUS="1"), ws / ".ganpipe" / "services" / "s3-data")
    try:
        up = st.services("up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield st
    finally:
        down = st.services("down")
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(make_workspace(tmp_path_factory.mktemp("persist"))) as st:
        yield st


@pytest.mark.slow
def test_a_run_killed_after_its_first_s3_checkpoint(stack):
    log = open(stack.ws / "killed-run.log", "w")
    proc = subprocess.Popen([str(BIN / "ganpipe"), "run", RESUMED_STEPS], cwd=stack.ws, env=stack.env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600  # prepare (the FID backbone is trained there) comes first
        while not stack.killed_run:  # the Ray run's first checkpoint has landed in the bucket
            assert proc.poll() is None, "the run ended before it was killed: " + (stack.ws / "killed-run.log").read_text()[-3000:]
            assert time.time() < deadline, (stack.ws / "killed-run.log").read_text()[-3000:]
            for key in stack.objects("ray/"):
                if key.endswith("/checkpoint.pt"):
                    stack.killed_run = key.split("/")[1]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; its Ray job with it
        proc.wait(30)
        log.close()
    # Ray kills the run's controller and workers once it sees the driver gone: wait for that, so
    # nothing writes to the bucket while the next test takes its inventory
    deadline = time.time() + 120
    while _alive_training_actors(stack):
        assert time.time() < deadline, "the killed run's Ray Train actors are still alive"
        time.sleep(0.5)
    # and an upload it had in flight can still land after its actors are gone (seen once: the controller's
    # checkpoint_manager_snapshot.json rewritten, 550 -> 670 bytes, after the next test's inventory), so
    # wait until two listings 2 s apart agree
    listing, deadline = stack.objects(), time.time() + 120
    while True:
        time.sleep(2)
        now = stack.objects()
        if now == listing:
            break
        assert time.time() < deadline, "the bucket kept changing after the killed run's actors were gone"
        listing = now


def _alive_training_actors(stack) -> int:
    url = f"http://127.0.0.1:{stack.base['GANPIPE_RAY_DASHBOARD_PORT']}/api/v0/actors?limit=1000"
    with urllib.request.urlopen(url, timeout=10) as r:
        actors = json.load(r)["data"]["result"]["result"]
    return sum(a["state"] == "ALIVE" and a["class_name"] in ("TrainController", "RayTrainWorker") for a in actors)


@pytest.mark.slow
def test_down_and_up_keep_the_bucket_and_the_killed_run_resumes_from_its_s3_checkpoint(stack):
    before = stack.objects()
    assert stack.services("down").returncode == 0
    assert not any(stack.data.rglob("*.tmp")) and any(stack.data.rglob("*._S3rver_object"))
    up = stack.services("up")
    assert up.returncode == 0 and "already running" not in up.stdout, up.stdout + up.stderr
    after = stack.objects()
    # nothing acknowledged is lost or changed: every key, size and ETag. The killed run may still have
    # landed an upload after the inventory (its last in-flight sample grid was measured doing so), so
    # the bucket may hold more than before, never less
    assert {k: after.get(k) for k in before} == before
    assert any(k.startswith(f"ray/{stack.killed_run}/checkpoint_") and k.endswith("/checkpoint.pt") for k in before)
    run = stack.ganpipe("run", RESUMED_STEPS)  # the same inputs: the same Ray run, on the fresh Ray cluster
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from gan_core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(stack.ws / "models" / "candidate" / "checkpoint.pt")
    train = json.loads((stack.ws / "models" / "candidate" / "train.json").read_text())
    assert train["run_name"] == stack.killed_run and ckpt["step"] == 100
    # resumed once, from a checkpoint that was in the bucket before the restart (not from step 0)
    resumed = ckpt["extra"].get("resumed_at")
    assert resumed and len(resumed) == 1 and resumed[0] > 0, ckpt["extra"]
    stack.commit("1")


@pytest.mark.slow
def test_a_store_killed_during_a_put_keeps_every_object_whole(stack):
    s3 = stack.s3()
    s3.put_object(Bucket="ganpipe", Key="crash/object", Body=b"the old version")
    before = stack.objects()
    # overwrite it with a PUT whose body stops half-way, and SIGKILL the store while it is being written
    url = urllib.parse.urlsplit(s3.generate_presigned_url("put_object", Params={"Bucket": "ganpipe",
                                                                                "Key": "crash/object"}))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("PUT", f"{url.path}?{url.query}", skip_accept_encoding=True)
    conn.putheader("Content-Length", str(8 << 20))
    conn.endheaders()
    conn.send(b"x" * (4 << 20))
    deadline = time.time() + 30
    while not any(p.stat().st_size for p in (stack.data / "ganpipe" / "crash").glob("*.tmp")):
        assert time.time() < deadline, "the store never started writing the new version"
        time.sleep(0.1)
    os.kill(int((stack.ws / ".ganpipe" / "services" / "s3.pid").read_text()), signal.SIGKILL)
    conn.close()
    deadline = time.time() + 60  # a SIGKILLed process counts as alive until it is reaped: poll
    while (status := {r["name"]: r["state"] for r in json.loads(stack.services("status", "--json").stdout)})["s3"] != "stopped":
        assert time.time() < deadline, status
        time.sleep(0.5)
    assert status["mlflow"] == "healthy", status
    up = stack.services("up")
    assert up.returncode == 0 and up.stdout.count("already running") == 4, up.stdout + up.stderr
    assert s3.get_object(Bucket="ganpipe", Key="crash/object")["Body"].read() == b"the old version"
    after = stack.objects()
    assert {k: after.get(k) for k in before} == before and not any(stack.data.rglob("*.tmp"))


@pytest.mark.slow
def test_dvc_pull_restores_every_version_and_every_registered_model_loads(stack):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.values["MLFLOW_TRACKING_URI"])
    versions = {v.version: v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert set(versions) == set(stack.commits) == {"1"}
    dvc_env = {**stack.base, **stack.values}
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=stack.ws, check=True,
                            capture_output=True, text=True).stdout.strip()
    for rel in (".dvc/cache", "data/prepared", "models/candidate"):
        subprocess.run(["rm", "-rf", str(stack.ws / rel)], check=True)
    try:
        for version, commit in stack.commits.items():
            subprocess.run(["git", "checkout", "-q", commit], cwd=stack.ws, check=True)
            pull = subprocess.run([str(BIN / "dvc"), "pull", "-r", "ganpipe-s3"], cwd=stack.ws, env=dvc_env,
                                  capture_output=True, text=True, timeout=300)
            assert pull.returncode == 0, pull.stdout + pull.stderr
            ckpt = (stack.ws / "models" / "candidate" / "checkpoint.pt").read_bytes()
            assert hashlib.sha256(ckpt).hexdigest() == versions[version].tags["checkpoint.sha256"]
            status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=stack.ws, env=dvc_env,
                                    capture_output=True, text=True, timeout=300)
            assert json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
    finally:
        subprocess.run(["git", "checkout", "-q", branch], cwd=stack.ws)
    for version in versions:  # the model files come through the MLflow server's artifact proxy
        out = stack.ganpipe("sample", f"models:/{MODEL}/{version}", "--n", "4", "--out", f"v{version}.png")
        assert out.returncode == 0 and (stack.ws / f"v{version}.png").stat().st_size > 0, out.stdout + out.stderr


def test_up_without_the_store_installed_says_how_to_install_it(tmp_path, monkeypatch):
    import infra.services as services
    from infra.config import ServicesConfig
    from infra.process import ServiceError

    monkeypatch.setattr(services, "S3STORE", tmp_path / "s3store")  # as in a clone before `make install`
    with pytest.raises(ServiceError, match=r"s3rver is not installed in .*s3store/node_modules; run `make install`"):
        services.up(ServicesConfig(home=tmp_path), print)
    assert not (tmp_path / "services").exists()  # refused before anything started or was written
    services.check_s3_store(ServicesConfig(home=tmp_path, s3_endpoint="http://127.0.0.1:1"))  # MinIO/S3: no store
