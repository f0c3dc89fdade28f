"""S3 trouble while pushing DVC data and while Ray Train checkpoints: the S3 server answers 500
InternalError or 503 SlowDown. The fault is injected where production code has no hook: in the
server, by tests/faulty_s3.py, a proxy in front of a real moto server that every client talks to.

Transient errors are absorbed by bounded retries with backoff (flows/ops/retry.py documents every
layer's bound); a persistent error fails clearly, in bounded time, and leaves the previous state as
the restore point: the DVC remote as it was (no new .dir object, dvc.lock untouched by the push),
the last complete Ray checkpoint in the bucket."""
from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from faulty_s3 import FaultyS3Proxy
from flows.data import versioning
from flows.ops.retry import (DVC_PUSH_ATTEMPTS, PYARROW_S3_MAX_ATTEMPTS, RAY_UPLOAD_ATTEMPTS, S3_MAX_ATTEMPTS,
                             s3_filesystem)
from flows.ops.settings import Settings
from s3server import MotoServer

FILES = 3  # files in the DVC-tracked folder: each is one object on the remote, plus the folder's .dir


# ---- the S3 server and the faulty proxy in front of it --------------------------------------------------
@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def proxy(moto):
    p = FaultyS3Proxy(moto.endpoint)
    yield p
    p.stop()


def direct(moto):
    """A client straight to moto, past the proxy: what is really in the bucket."""
    import boto3

    return boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def bucket(moto, name: str) -> str:
    direct(moto).create_bucket(Bucket=name)
    return name


def objects(moto, name: str, prefix: str = "") -> dict[str, str]:
    """key -> ETag of every object under prefix."""
    pages = direct(moto).get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def s3_env(proxy, monkeypatch):
    for k, v in proxy.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    return proxy


def test_the_proxy_forwards_faithfully_and_injects_s3_errors(moto, s3_env):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    name = bucket(moto, "proxy-check")
    s3 = boto3.client("s3", endpoint_url=s3_env.endpoint,
                      config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    body = os.urandom(3_000_000)  # large enough for Expect: 100-continue
    s3.put_object(Bucket=name, Key="a/b c.bin", Body=body)
    assert s3.get_object(Bucket=name, Key="a/b c.bin")["Body"].read() == body
    assert s3.head_object(Bucket=name, Key="a/b c.bin")["ContentLength"] == len(body)
    s3_env.fail(1)
    with pytest.raises(ClientError, match="InternalError"):
        s3.put_object(Bucket=name, Key="x", Body=b"1")
    s3_env.fail(1, status=503)
    with pytest.raises(ClientError, match="SlowDown"):
        s3.put_object(Bucket=name, Key="x", Body=b"1")
    s3.put_object(Bucket=name, Key="x", Body=b"1")  # the budget is spent: forwarded again
    assert "x" in objects(moto, name) and s3_env.failed == 2 and s3_env.pending == 0


@pytest.mark.slow  # seconds of real SDK backoff
def test_boto3_sources_retry_s3_errors_a_bounded_number_of_times(moto, s3_env, tmp_path):
    from flows.data.sources import fetch_s3
    from gan_core.ingest.report import IngestError

    name = bucket(moto, "source-data")
    direct(moto).put_object(Bucket=name, Key="pets/cat/1.png", Body=b"not really a png")
    s3_env.fail(S3_MAX_ATTEMPTS - 1, status=503, methods={"GET"}, path_contains="/pets/cat/1.png")
    assert (fetch_s3(f"s3://{name}/pets", tmp_path / "a") / "cat" / "1.png").read_bytes() == b"not really a png"
    assert s3_env.pending == 0
    s3_env.fail_forever(methods={"GET"}, path_contains="/pets/cat/1.png")
    with pytest.raises(IngestError, match="InternalError"):
        fetch_s3(f"s3://{name}/pets", tmp_path / "b")
    # standard mode, S3_MAX_ATTEMPTS per request (botocore's default legacy mode would make 5)
    assert s3_env.count("GET", injected=True) == (S3_MAX_ATTEMPTS - 1) + S3_MAX_ATTEMPTS


@pytest.mark.slow  # seconds of real SDK backoff
def test_the_checkpoint_filesystem_keeps_its_retry_strategy_when_pickled(moto, s3_env):
    """Ray ships the storage filesystem to every worker by pickling it; pyarrow's own S3FileSystem
    comes back with the default strategy (3 attempts), ours with PYARROW_S3_MAX_ATTEMPTS."""
    name = bucket(moto, "pickled-fs")
    fs = pickle.loads(pickle.dumps(s3_filesystem(endpoint_override=s3_env.endpoint.split("//")[1], scheme="http",
                                                 region="us-east-1")))
    s3_env.fail(PYARROW_S3_MAX_ATTEMPTS - 1)  # 3: all that pyarrow's default strategy (3 attempts) tries
    with fs.open_output_stream(f"{name}/k") as f:
        f.write(b"data")
    assert s3_env.pending == 0 and "k" in objects(moto, name)
    s3_env.fail(PYARROW_S3_MAX_ATTEMPTS)
    with pytest.raises(OSError, match="internal error"):
        with fs.open_output_stream(f"{name}/k2") as f:
            f.write(b"data")


# ---- DVC push --------------------------------------------------------------------------------------------
def dvc_workspace(tmp_path: Path, remote_bucket: str) -> Settings:
    """A DVC project with one stage whose output is a folder of FILES files, and an S3 remote
    reached through the proxy (AWS_ENDPOINT_URL, as `ganpipe services` sets it)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {"cmd": "true", "outs": ["out"]}}}))
    s = Settings(workspace=ws, home=ws / ".ganpipe", mlflow_uri=f"sqlite:///{ws}/m.db", ray_address=None,
                 dvc_remote="s3remote", dvc_remote_url=f"s3://{remote_bucket}/dvc", ray_storage=str(ws / "ray"))
    versioning.ensure_repo(s)
    return s


def new_version(s: Settings, v: str) -> str:
    """Write version v of the stage's output and `dvc commit` it, as the pipeline does before a push.
    Returns the folder's .dir key on the remote."""
    out = s.workspace / "out"
    out.mkdir(exist_ok=True)
    for i in range(FILES):
        (out / f"{i}.txt").write_text(f"version {v}, file {i}\n")
    versioning.commit(s, "make")
    md5 = versioning.locked_out_md5(s, "make", out)
    assert md5 and md5.endswith(".dir")
    return f"dvc/files/md5/{md5[:2]}/{md5[2:]}"


def cloud_status(s: Settings) -> dict:
    import json

    proc = versioning.dvc(s, "status", "--cloud", "-r", s.dvc_remote, "--json", "make")
    return json.loads(proc.stdout or "{}")


def retries_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


@pytest.mark.slow
def test_dvc_push_survives_s3_errors_that_outlast_dvcs_own_retries(moto, s3_env, tmp_path, caplog):
    name = bucket(moto, "dvc-transient")
    s = dvc_workspace(tmp_path, name)
    dir_key = new_version(s, "1")
    lock = (s.workspace / "dvc.lock").read_bytes()
    # one `dvc push` makes S3_MAX_ATTEMPTS requests per object before it gives up on it (measured:
    # botocore standard mode; s3fs does not retry a 500), FILES objects in parallel, the .dir only
    # after all of them: k failures beat the first push for sure and spill into the second
    k = S3_MAX_ATTEMPTS * FILES + 2
    s3_env.fail(k)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flows.ops.retry"):
        versioning.push(s, "make")
    elapsed = time.monotonic() - started
    assert s3_env.pending == 0 and s3_env.failed == k  # every injected failure was hit...
    logged = retries_logged(caplog)
    # ...and one retry of the whole push beat them
    assert len(logged) == 1 and "attempt 1 of" in logged[0] and "s3remote" in logged[0], logged
    assert dir_key in objects(moto, name) and len(objects(moto, name, "dvc/files/")) == FILES + 1
    assert cloud_status(s) == {}  # DVC agrees: everything is on the remote
    assert (s.workspace / "dvc.lock").read_bytes() == lock
    print(f"push with {k} injected 500s: {elapsed:.1f} s")


@pytest.mark.slow
def test_dvc_push_against_a_persistent_error_fails_clearly_in_bounded_time_and_records_nothing(
        moto, s3_env, tmp_path, caplog):
    name = bucket(moto, "dvc-persistent")
    s = dvc_workspace(tmp_path, name)
    v1_dir = new_version(s, "1")
    versioning.push(s, "make")  # the previous, complete push
    assert cloud_status(s) == {} and v1_dir in objects(moto, name)
    v2_dir = new_version(s, "2")
    lock, remote_before = (s.workspace / "dvc.lock").read_bytes(), objects(moto, name)

    s3_env.fail_forever()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flows.ops.retry"), pytest.raises(versioning.VersioningError) as ei:
        versioning.push(s, "make")
    elapsed = time.monotonic() - started
    s3_env.heal()

    msg = str(ei.value)
    assert "remote 's3remote'" in msg and f"s3://{name}/dvc" in msg, msg
    assert f"failed {DVC_PUSH_ATTEMPTS} attempts" in msg and "InternalError" in msg, msg
    assert len(retries_logged(caplog)) == DVC_PUSH_ATTEMPTS - 1
    # the bound: DVC_PUSH_ATTEMPTS pushes x S3_MAX_ATTEMPTS requests for each of the FILES objects, no more
    assert s3_env.failed == DVC_PUSH_ATTEMPTS * S3_MAX_ATTEMPTS * FILES
    # per push <= 7 s of botocore backoff + DVC's start-up; <= 7 s between pushes (flows/ops/retry.py)
    assert elapsed < 120, elapsed
    # nothing half-recorded: the remote is exactly as before (no v2 file, no v2 .dir), dvc.lock as
    # `dvc commit` left it, and DVC sees v2 as not pushed while v1 is still whole on the remote
    assert objects(moto, name) == remote_before and v2_dir not in remote_before and v1_dir in remote_before
    assert (s.workspace / "dvc.lock").read_bytes() == lock
    assert cloud_status(s) != {}
    versioning.push(s, "make")  # healed: the same push goes through
    assert cloud_status(s) == {} and v2_dir in objects(moto, name)
    print(f"persistent 500s: gave up after {elapsed:.1f} s, {s3_env.failed} requests refused:\n{msg}")


@pytest.mark.slow
def test_dvc_push_does_not_retry_an_error_retrying_cannot_fix(moto, s3_env, tmp_path, caplog):
    s = dvc_workspace(tmp_path, "no-such-bucket")
    new_version(s, "1")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flows.ops.retry"), \
            pytest.raises(versioning.VersioningError, match="NoSuchBucket|does not exist"):
        versioning.push(s, "make")
    assert retries_logged(caplog) == [] and time.monotonic() - started < 30


# ---- Ray Train checkpoints on S3 -------------------------------------------------------------------------
RAY_BUCKET = "ray-ckpts"
STEPS, EVERY = 60, 10


@pytest.fixture(scope="module")
def ray_s3(tmp_path_factory, moto):
    """Local Ray (2 CPUs) whose run storage is s3://RAY_BUCKET/ray through the proxy. The proxy
    and the AWS variables are set before ray.init so that every worker inherits them."""
    from conftest import tiny_config
    from flows.stages.prepare import prepare
    from flows.ops.settings import configure_environment

    proxy = FaultyS3Proxy(moto.endpoint)
    saved = {k: os.environ.get(k) for k in (*proxy.env(), "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")}
    os.environ.update(proxy.env())
    bucket(moto, RAY_BUCKET)
    root = tmp_path_factory.mktemp("ray-s3")
    s = Settings(workspace=root, home=root / "home", mlflow_uri=f"sqlite:///{root}/m.db", ray_address=None,
                 dvc_remote="none", dvc_remote_url=None, ray_storage=f"s3://{RAY_BUCKET}/ray")
    configure_environment(s)
    base = tiny_config(data={"resolution": 8}, train={"steps": STEPS, "batch_size": 16, "num_workers": 2,
                                                      "log_every": EVERY, "checkpoint_every": EVERY})
    data = prepare(s, base)
    import ray

    ray.init(address="local", num_cpus=2, runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}},
             logging_level="WARNING")
    yield s, data, proxy
    ray.shutdown()
    proxy.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def config(max_failures: int):
    from conftest import tiny_config

    return tiny_config(data={"resolution": 8}, train={"steps": STEPS, "batch_size": 16, "num_workers": 2,
                                                      "log_every": EVERY, "checkpoint_every": EVERY,
                                                      "max_failures": max_failures})


def checkpoints(moto, run: str) -> dict[str, set[str]]:
    """checkpoint folder -> names of the files in it, for one run in the bucket."""
    out: dict[str, set[str]] = {}
    for key in objects(moto, RAY_BUCKET, f"ray/{run}/"):
        m = re.match(rf"ray/{re.escape(run)}/(checkpoint_[^/]+)/(.*)$", key)
        if m:  # a folder marker alone ("checkpoint_x/") still names a (so far empty) checkpoint
            files = out.setdefault(m.group(1), set())
            if m.group(2):
                files.add(m.group(2))
    return out


def when_a_checkpoint_is_complete(moto, run: str, then) -> threading.Thread:
    """Calls `then` as soon as a checkpoint of `run` has both its files in the bucket."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any({"checkpoint.pt", "checkpoint.pt.json"} <= files for files in checkpoints(moto, run).values()):
                then()
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def restore_point(moto, run: str, tmp: Path) -> tuple[dict, list[str]]:
    """The newest checkpoint in the bucket that loads and verifies, and the newer ones that do not."""
    from gan_core.checkpoint import CheckpointError, load_checkpoint

    s3, refused = direct(moto), []
    for name in sorted(checkpoints(moto, run), reverse=True):  # timestamped names sort by age
        local = tmp / name
        local.mkdir(parents=True)
        for f in checkpoints(moto, run)[name]:
            s3.download_file(RAY_BUCKET, f"ray/{run}/{name}/{f}", str(local / f))
        try:
            return load_checkpoint(local / "checkpoint.pt"), refused
        except CheckpointError:
            refused.append(name)
    raise AssertionError(f"no complete checkpoint of {run} in the bucket")


@pytest.mark.slow
def test_ray_checkpoints_survive_transient_s3_errors(ray_s3, moto, tmp_path):
    from flows.stages.train import run_training
    from gan_core.checkpoint import load_checkpoint

    s, data, proxy = ray_s3
    # the next checkpoint.pt upload is refused as often as an unconfigured filesystem can take
    # (Ray's RAY_UPLOAD_ATTEMPTS uploads x pyarrow's default 3 requests) and then no more: ours
    # absorbs it (3 x PYARROW_S3_MAX_ATTEMPTS). max_failures=0: no worker restart may paper over it
    fails, failed_before = RAY_UPLOAD_ATTEMPTS * 3, proxy.failed
    assert fails < RAY_UPLOAD_ATTEMPTS * PYARROW_S3_MAX_ATTEMPTS
    proxy.heal()
    watcher = when_a_checkpoint_is_complete(moto, "transient",
                                            lambda: proxy.fail(fails, path_contains="/checkpoint.pt?"))
    started = time.monotonic()
    ref = run_training(s, config(max_failures=0), data["path"], "transient", None, {})
    watcher.join(5)
    assert proxy.pending == 0 and proxy.failed - failed_before == fails, (proxy.pending, proxy.failed)  # they fired
    ckpt = load_checkpoint(ref["checkpoint"])
    assert ckpt["step"] == STEPS and "resumed_at" not in ckpt["extra"]  # completed without a restart
    print(f"transient: {fails} refused requests absorbed, run took {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("refused", ["/checkpoint.pt", "/ray/"], ids=["worker-checkpoint-uploads", "every-write"])
def test_ray_run_fails_clearly_on_persistent_s3_errors_and_keeps_the_last_good_checkpoint(ray_s3, moto, tmp_path,
                                                                                        refused):
    """Refusing the workers' checkpoint uploads: the worker fails, Ray restarts the group from the
    last registered checkpoint (max_failures=1), fails again, and the run fails. Refusing every write
    under the run also hits the controller's checkpoint_manager_snapshot.json: a controller error."""
    from flows.stages.train import TrainingError, run_training

    s, data, proxy = ray_s3
    proxy.heal()
    failed_before = proxy.failed
    run = "persistent-" + refused.strip("/").replace(".", "-")
    watcher = when_a_checkpoint_is_complete(moto, run, lambda: proxy.fail_forever(path_contains=refused))
    started = time.monotonic()
    try:
        with pytest.raises(TrainingError) as ei:
            run_training(s, config(max_failures=1), data["path"], run, None, {})
    finally:
        elapsed = time.monotonic() - started
        proxy.heal()
        watcher.join(5)
    msg = str(ei.value)
    assert run in msg and re.search(r"internal error|InternalError|INTERNAL_FAILURE", msg), msg[-3000:]
    refused_requests = proxy.failed - failed_before
    assert refused_requests >= PYARROW_S3_MAX_ATTEMPTS  # the SDK did retry before giving up...
    # ...a bounded number of times: per worker-group attempt (max_failures=1: two), Ray's upload
    # retries x the SDK's; and the controller's snapshot write, once
    assert refused_requests <= 2 * RAY_UPLOAD_ATTEMPTS * PYARROW_S3_MAX_ATTEMPTS + PYARROW_S3_MAX_ATTEMPTS
    # per checkpoint <= ~25 s of backoff (flows/ops/retry.py), twice, plus a worker-group restart
    assert elapsed < 180, elapsed
    ckpt, incomplete = restore_point(moto, run, tmp_path)
    assert 0 < ckpt["step"] < STEPS and ckpt["step"] % EVERY == 0, ckpt["step"]
    print(f"{run}: failed after {elapsed:.1f} s, {proxy.failed - failed_before} requests refused; restore point "
          f"step {ckpt['step']}, {len(incomplete)} newer incomplete checkpoint folder(s) refused: {incomplete}")
