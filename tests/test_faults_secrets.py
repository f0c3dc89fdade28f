"""No secret leaks: credentials carrying a unique marker go through a real `ganpipe run` (S3 DVC remote on
a moto server, so the AWS keys are really used) and the marker must appear nowhere the run writes:
output, workspace, GANPIPE_HOME (MLflow, Prefect, Ray checkpoints, DVC config), Ray's session logs,
MLflow params/tags, the bucket, and the error text of a run whose S3 push fails."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from s3server import MotoServer, free_port
from workspace import ganpipe, make_workspace

MARKER = "sEcReT" + uuid.uuid4().hex
RAY_TMP = Path("/tmp/ray")


def secret_env(endpoint: str, bucket: str) -> dict[str, str]:
    """Every credential a deployment may have in its environment, each carrying the marker."""
    return {"AWS_ACCESS_KEY_ID": f"AKIA{MARKER}", "AWS_SECRET_ACCESS_KEY": f"key-{MARKER}",
            "MLFLOW_TRACKING_USERNAME": f"user-{MARKER}", "MLFLOW_TRACKING_PASSWORD": f"pw-{MARKER}",
            "PREFECT_API_KEY": f"pnu_{MARKER}",
            "GANPIPE_DVC_REMOTE": "s3remote", "GANPIPE_DVC_REMOTE_URL": f"s3://{bucket}/dvc",
            "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


def files_with_marker(root: Path) -> list[str]:
    """Every regular file under root whose bytes contain the marker (binary files included)."""
    needle, hits = MARKER.encode(), []
    for dirpath, _, names in os.walk(root):  # symlinks are not followed: each file is scanned where it lives
        for name in names:
            p = Path(dirpath) / name
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:  # a file removed while walking (a concurrent Ray session's socket, a tmp file)
                continue
    return hits


def ray_sessions() -> set[Path]:
    return set(RAY_TMP.glob("session_2*")) if RAY_TMP.is_dir() else set()


def mlflow_texts(db: Path) -> list[str]:
    """Params and tags of every run, logged model and model version, read through MLflow itself.
    Logged models matter: MLflow tags them `mlflow.user` from MLFLOW_TRACKING_USERNAME."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = [r for e in exps for r in c.search_runs([e])]
    models = c.search_logged_models(experiment_ids=exps)
    versions = c.search_model_versions()
    assert runs and models and versions, "nothing in MLflow: the check would prove nothing"
    out = [f"{k}={v}" for r in runs for k, v in {**r.data.params, **r.data.tags}.items()]
    out += [f"{k}={v}" for m in models for k, v in {**m.params, **m.tags}.items()]
    return out + [f"{k}={v}" for mv in versions for k, v in mv.tags.items()]


def bucket_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="reader",
                      aws_secret_access_key="reader")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def moto(tmp_path):
    server = MotoServer(tmp_path / "moto.log")
    yield server
    server.stop()


@pytest.mark.slow
def test_credentials_leak_nowhere_in_a_successful_run(tmp_path, moto):
    import boto3

    bucket = "leakcheck"
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=bucket)
    ws = make_workspace(tmp_path)
    before = ray_sessions()
    out = ganpipe(ws, "run", **secret_env(moto.endpoint, bucket))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    objects = bucket_objects(moto.endpoint, bucket)
    assert any(k.startswith("dvc/") for k in objects), "the S3 remote was not used: the test would prove nothing"
    assert MARKER not in out.stdout + out.stderr
    home = ws / ".ganpipe"
    stores = [home / "mlflow.db", home / "prefect" / "prefect.db", home / "mlartifacts", ws / ".dvc" / "config.local"]
    assert all(p.exists() for p in stores) and list(home.glob("ray_results/*/checkpoint_*/checkpoint.pt.json")), \
        "a store the scan should cover is missing"
    assert files_with_marker(ws) == []  # workspace incl. .dvc/config.local, .git and GANPIPE_HOME (ws/.ganpipe)
    new_sessions = ray_sessions() - before
    assert new_sessions, "no Ray session was started: the Ray logs were not checked"
    assert [h for s in new_sessions for h in files_with_marker(s / "logs")] == []
    assert [t for t in mlflow_texts(ws / ".ganpipe" / "mlflow.db") if MARKER in t] == []
    assert [k for k, body in objects.items() if MARKER.encode() in body] == []


@pytest.mark.slow
def test_credentials_leak_not_into_the_error_of_a_failed_push(tmp_path):
    ws = make_workspace(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the push fails after using the creds
    out = ganpipe(ws, "run", **secret_env(closed, "nowhere"))
    assert out.returncode != 0, out.stdout[-3000:]
    assert "dvc push" in out.stderr or "dvc push" in out.stdout, out.stderr[-3000:]  # failed where we meant it to
    assert MARKER not in out.stdout + out.stderr
    assert files_with_marker(ws) == []


def cli_settings(tmp: Path, mlflow_uri: str):
    from flows.ops.settings import Settings

    return Settings(workspace=tmp, home=tmp / ".ganpipe", mlflow_uri=mlflow_uri, ray_address=None,
                    dvc_remote="ganpipe-local", dvc_remote_url=None, ray_storage=str(tmp / "ray"))


def test_embedded_backends_drop_the_credentials_they_never_use(tmp_path, monkeypatch):
    """The cause of the leak the slow test caught: with an embedded store MLflow still tagged logged
    models `mlflow.user=<MLFLOW_TRACKING_USERNAME>`; Ray workers and DVC inherit whatever remains."""
    from flows.ops.settings import drop_unused_credentials

    creds = {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p", "PREFECT_API_KEY": "k"}
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert sorted(drop_unused_credentials(cli_settings(tmp_path, f"sqlite:///{tmp_path}/m.db"))) == sorted(creds)
    assert not any(k in os.environ for k in creds)


def test_servers_keep_their_credentials(tmp_path, monkeypatch):
    from flows.ops.settings import drop_unused_credentials

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_KEY"):
        monkeypatch.setenv(k, "x")
    monkeypatch.setenv("PREFECT_API_URL", "https://prefect.example/api")
    assert drop_unused_credentials(cli_settings(tmp_path, "https://mlflow.example")) == []
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == os.environ["PREFECT_API_KEY"] == "x"


# --- the services profile: no shipped credentials, and SQLite under MLflow is a deliberate choice

def _services(home: Path, **env: str):
    from infra.config import ServicesConfig

    return ServicesConfig.from_env(home, env)


def test_local_store_credentials_are_generated_per_home_and_private(tmp_path):
    import subprocess

    from infra.services import credentials
    from workspace import ROOT

    a, b = credentials(_services(tmp_path / "a")), credentials(_services(tmp_path / "b"))
    assert a == credentials(_services(tmp_path / "a"))  # stable for one home: the running store keeps working
    assert a["AWS_ACCESS_KEY_ID"] != b["AWS_ACCESS_KEY_ID"] and a["AWS_SECRET_ACCESS_KEY"] != b["AWS_SECRET_ACCESS_KEY"]
    values = [*a.values(), *b.values()]
    assert not {v.lower() for v in values} & {"minioadmin", "testing", "password", "ganpipe", "secret", "admin"}
    assert all(len(v) >= 16 for v in values)
    for v in values:  # not a literal anywhere in the repo: nothing to copy from the source
        # -e: token_urlsafe draws "-" too, and a secret that begins with it is not an option to git grep (exit 129)
        found = subprocess.run(["git", "grep", "-F", "-q", "-e", v], cwd=ROOT)
        assert found.returncode == 1, f"{v!r} appears in the repo's tracked files"
    for home in ("a", "b"):
        assert (tmp_path / home / "services" / "credentials.json").stat().st_mode & 0o777 == 0o600


def test_env_file_with_the_credentials_is_private(tmp_path):
    from infra.services import write_env_file

    cfg = _services(tmp_path)
    cfg.root.mkdir(parents=True)
    assert write_env_file(cfg).stat().st_mode & 0o777 == 0o600


def test_up_refuses_sqlite_before_starting_anything(tmp_path, monkeypatch):
    import infra.services as services
    from infra.process import ServiceError

    monkeypatch.setattr(services, "start", lambda *a, **k: pytest.fail("a service was started"))
    cfg = _services(tmp_path, GANPIPE_MLFLOW_SQLITE="refuse")
    with pytest.raises(ServiceError, match=r"GANPIPE_MLFLOW_SQLITE=refuse.*GANPIPE_MLFLOW_BACKEND_URI=postgresql://"):
        services.up(cfg, lambda line: None)
    assert not cfg.root.exists()  # not even the services folder (credentials, env file) was written


def test_up_warns_once_about_sqlite_by_default(tmp_path, monkeypatch):
    import infra.services as services

    monkeypatch.setattr(services, "plan", lambda cfg: [])  # the guard and the env file, no servers
    lines: list[str] = []
    services.up(_services(tmp_path), lines.append)
    warnings = [line for line in lines if "SQLite" in line]
    assert len(warnings) == 1 and "concurrent writers" in warnings[0] and "postgresql://" in warnings[0]


def test_up_with_a_server_backend_neither_warns_nor_refuses(tmp_path, monkeypatch):
    import infra.services as services

    monkeypatch.setattr(services, "plan", lambda cfg: [])
    lines: list[str] = []
    cfg = _services(tmp_path, GANPIPE_MLFLOW_SQLITE="refuse", GANPIPE_MLFLOW_BACKEND_URI="postgresql://u@db/mlflow")
    services.up(cfg, lines.append)
    assert lines == []


def test_sqlite_setting_is_validated():
    with pytest.raises(ValueError, match="GANPIPE_MLFLOW_SQLITE: expected warn or refuse, got 'maybe'"):
        _services(Path("/nonexistent"), GANPIPE_MLFLOW_SQLITE="maybe")
