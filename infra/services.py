"""`ganpipe services up|down|status`: the real service stack on 127.0.0.1.

Five server processes, each with its log and pid under GANPIPE_HOME/services/:
  s3          an S3-compatible store that keeps the pipeline's bucket on disk under services/s3-data
              (s3rver under Node.js, infra/s3store/), so `down`, `up` and a crash lose nothing;
              skipped when GANPIPE_S3_ENDPOINT names an existing store (MinIO, S3)
  mlflow      MLflow tracking server + registry (SQLite, or GANPIPE_MLFLOW_BACKEND_URI), artifacts proxied
              to s3://<bucket>/mlflow
  prefect     Prefect server: API + UI
  ray-head    Ray head node (GCS, dashboard, client server)
  ray-worker  a second Ray node joining the head: two raylets, so training spans nodes as on a cluster
`up` writes services/ganpipe.env, which the pipeline reads through GANPIPE_ENV_FILE: switching from
the embedded defaults to these services is configuration only.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.config import ServicesConfig
from infra.process import ServiceError, http_ok, pid_of, start, stop, stop_all, wait_healthy

BIN = Path(sys.executable).parent
# the local store: s3rver (npm, pinned by package-lock.json, installed by `make install`) behind a
# launcher that decodes aws-chunked bodies, writes atomically and sorts listings (see server.js)
S3STORE = Path(__file__).resolve().parent / "s3store"


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: Callable[[], bool]
    endpoint: str
    timeout_s: float = 120.0
    stop_grace_s: float = 20.0  # SIGTERM to SIGKILL in `down`
    # services of one wave start together once the waves before are healthy, and stop together after
    # the waves behind them: the store first and last, the Ray worker only once its head answers
    wave: int = 1


def credentials(cfg: ServicesConfig) -> dict[str, str]:
    """S3 credentials for the local store: generated once per GANPIPE_HOME (never a shipped default)
    and kept in a 0600 file; an external store uses the caller's own AWS credentials."""
    if cfg.s3_endpoint:
        return {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ}
    f = cfg.root / "credentials.json"
    if not f.exists():
        cfg.root.mkdir(parents=True, exist_ok=True)
        creds = {"AWS_ACCESS_KEY_ID": "ganpipe-" + secrets.token_hex(6),
                 "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(creds, out)
    return json.loads(f.read_text())


def pipeline_env(cfg: ServicesConfig) -> dict[str, str]:
    """What the pipeline (and DVC, boto3, Ray's S3 storage) needs to use the services."""
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{cfg.prefect_port}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{cfg.mlflow_port}",
        "RAY_ADDRESS": f"127.0.0.1:{cfg.ray_port}",
        "AWS_ENDPOINT_URL": cfg.endpoint,
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        **credentials(cfg),
        "GANPIPE_DVC_REMOTE": "ganpipe-s3",
        "GANPIPE_DVC_REMOTE_URL": f"s3://{cfg.bucket}/dvc",
        "GANPIPE_RAY_STORAGE": f"s3://{cfg.bucket}/ray",
    }


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_"))}
    env.update({"PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    return env


def _s3_env(cfg: ServicesConfig) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": cfg.endpoint, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            **credentials(cfg)}


def _ray_auth_header() -> dict[str, str]:
    """Ray's token auth (on once a token exists in ~/.ray/auth_token or RAY_AUTH_TOKEN): the
    dashboard's API then wants the token as a bearer header."""
    token = os.environ.get("RAY_AUTH_TOKEN") or ""
    f = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and f.is_file():
        token = f.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _ray_nodes_alive(cfg: ServicesConfig, want: int) -> bool:
    """The dashboard's State API lists nodes; healthy means `want` of them alive."""
    import urllib.request

    url = f"http://127.0.0.1:{cfg.ray_dashboard_port}/api/v0/nodes?limit=100"
    req = urllib.request.Request(url, headers=_ray_auth_header())
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            nodes = json.load(r)["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return False
    return sum(n.get("state") == "ALIVE" for n in nodes) >= want


def _bucket_ready(cfg: ServicesConfig) -> bool:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    env = _s3_env(cfg)
    s3 = boto3.client("s3", endpoint_url=cfg.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                      aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                      config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
    try:
        s3.head_bucket(Bucket=cfg.bucket)
        return True
    except ClientError:
        try:
            s3.create_bucket(Bucket=cfg.bucket)  # idempotent first start
            return True
        except (ClientError, BotoCoreError):
            return False
    except BotoCoreError:
        return False


def plan(cfg: ServicesConfig) -> list[Service]:
    """The services in start order (stopped in reverse)."""
    base, root = _base_env(), cfg.root
    out: list[Service] = []
    if not cfg.s3_endpoint:
        # --openssl-legacy-provider: s3rver's listing continuation tokens use DES (else paging answers 500)
        out.append(Service("s3", [shutil.which("node") or "node", "--openssl-legacy-provider",
                                  str(S3STORE / "server.js"), str(cfg.s3_data), "127.0.0.1", str(cfg.s3_port)],
                           {**base, **_s3_env(cfg)}, lambda: _bucket_ready(cfg), cfg.endpoint, 30, wave=0))
    out.append(Service(
        "mlflow",
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(cfg.mlflow_port),
         "--artifacts-destination", f"s3://{cfg.bucket}/mlflow",
         "--serve-artifacts", "--workers", "1"],
        # job execution off: it forks ~8 worker processes (~2 GB) the pipeline never uses
        # the backend URI (a PostgreSQL password in it) goes by environment: argv is world-readable in ps
        {**base, **_s3_env(cfg), "MLFLOW_S3_ENDPOINT_URL": cfg.endpoint, "MLFLOW_BACKEND_STORE_URI": cfg.backend_uri,
         "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
        lambda: http_ok(f"http://127.0.0.1:{cfg.mlflow_port}/health"), f"http://127.0.0.1:{cfg.mlflow_port}"))
    out.append(Service(
        "prefect",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(cfg.prefect_port)],
        # the UI calls the API at PREFECT_UI_API_URL, which otherwise stays on port 4200 whatever --port says
        {**base, "PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
         "PREFECT_UI_API_URL": f"http://127.0.0.1:{cfg.prefect_port}/api"},
        lambda: http_ok(f"http://127.0.0.1:{cfg.prefect_port}/api/health"), f"http://127.0.0.1:{cfg.prefect_port}"))
    # Ray nodes carry the S3 settings in their environment, so workers write checkpoints to the
    # bucket without credentials ever travelling in a runtime_env or a pickled filesystem
    # both nodes pin one auth mode: a head that found a token in ~/.ray (left by some other Ray use)
    # turned token auth on, and the worker, without it, was refused. The stack listens on 127.0.0.1 only.
    ray_env = {**base, **_s3_env(cfg), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_AUTH_MODE": "disabled"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cfg.ray_node_cpus), "--block",
              "--disable-usage-stats"]
    out.append(Service(
        "ray-head",
        [str(BIN / "ray"), "start", "--head", "--port", str(cfg.ray_port), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(cfg.ray_dashboard_port), "--ray-client-server-port", str(cfg.ray_client_port),
         *common],
        ray_env, lambda: _ray_nodes_alive(cfg, 1), f"127.0.0.1:{cfg.ray_port} (dashboard "
                                                   f"http://127.0.0.1:{cfg.ray_dashboard_port})",
        # measured: 24 s after SIGTERM `ray start --block`, its GCS and the autoscaler monitor were
        # still running (the raylet went at 10 s), so every `down` waited out the whole grace. The
        # head keeps nothing to flush (no GCS fault tolerance; runs checkpoint to storage themselves)
        stop_grace_s=3.0))
    out.append(Service(
        "ray-worker", [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{cfg.ray_port}", *common],
        ray_env, lambda: _ray_nodes_alive(cfg, 2), "joins the head", wave=2))
    return out


def _files(cfg: ServicesConfig, name: str) -> tuple[Path, Path]:
    return cfg.root / f"{name}.log", cfg.root / f"{name}.pid"


def write_env_file(cfg: ServicesConfig) -> Path:
    """KEY=VALUE lines (`set -a; . file` works too), 0600 because it holds the S3 credentials."""
    lines = ["# written by `ganpipe services up`; point GANPIPE_ENV_FILE here to use the services"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in pipeline_env(cfg).items()]
    tmp = cfg.env_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(tmp, cfg.env_file)
    return cfg.env_file


def check_mlflow_backend(cfg: ServicesConfig, echo: Callable[[str], None]) -> None:
    """SQLite takes one writer at a time: parallel runs, a deployment and the UI writing at once hit
    'database is locked'. Fine on one laptop, so a warning by default; a production profile sets
    GANPIPE_MLFLOW_SQLITE=refuse so a forgotten GANPIPE_MLFLOW_BACKEND_URI cannot slip through."""
    if not cfg.backend_uri.startswith("sqlite:"):
        return
    why = (f"the MLflow server's backend is SQLite ({cfg.backend_uri}), which serialises concurrent writers "
           "('database is locked'); set GANPIPE_MLFLOW_BACKEND_URI=postgresql://user:pw@host/db")
    if cfg.mlflow_sqlite == "refuse":
        raise ServiceError(f"GANPIPE_MLFLOW_SQLITE=refuse: {why}")
    echo(f"warning: {why} (GANPIPE_MLFLOW_SQLITE=refuse makes this an error)")


def check_s3_store(cfg: ServicesConfig) -> None:
    """The local store needs Node.js and s3rver installed into infra/s3store (`make install` does both)."""
    if cfg.s3_endpoint:
        return
    if shutil.which("node") is None:
        raise ServiceError("s3: the local S3 store runs on Node.js, and `node` is not on PATH; install Node.js "
                           "(>= 18, e.g. Debian's nodejs) or set GANPIPE_S3_ENDPOINT to an S3-compatible store")
    if not (S3STORE / "node_modules" / "s3rver" / "package.json").is_file():
        raise ServiceError(f"s3: s3rver is not installed in {S3STORE / 'node_modules'}; run `make install` "
                           f"(or `npm ci --omit=dev --prefix {S3STORE}`), or set GANPIPE_S3_ENDPOINT")


def waves(services: list[Service]) -> list[list[Service]]:
    """The services grouped by wave, in start order (plan order within a wave)."""
    return [[svc for svc in services if svc.wave == w] for w in sorted({svc.wave for svc in services})]


def up(cfg: ServicesConfig, echo: Callable[[str], None]) -> Path:
    """Start whatever is not running, wave by wave, each wave health-checked before the next (its
    servers boot side by side: measured 23.4 s one after the other). If one fails, the ones this
    call started are stopped again, so a failed `up` leaves nothing half-running."""
    check_mlflow_backend(cfg, echo)  # before anything starts or is written
    check_s3_store(cfg)
    cfg.root.mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        for wave in waves(plan(cfg)):
            starting = [(svc, time.time()) for svc in wave if _start(cfg, svc, echo)]
            started += [svc for svc, _ in starting]
            for svc, since in starting:
                log, pid_file = _files(cfg, svc.name)
                took = wait_healthy(svc.name, svc.health, pid_file, log, svc.timeout_s, since)
                echo(f"{svc.name:<11} healthy in {took:4.1f} s  {svc.endpoint}  (log {log})")
    except BaseException:
        stop_all([(_files(cfg, svc.name)[1], svc.stop_grace_s) for svc in reversed(started)])
        raise
    return write_env_file(cfg)


def _start(cfg: ServicesConfig, svc: Service, echo: Callable[[str], None]) -> bool:
    """Start one service unless it already runs healthy; True when this call started it."""
    log, pid_file = _files(cfg, svc.name)
    if pid_of(pid_file) is not None and svc.health():
        echo(f"{svc.name:<11} already running  {svc.endpoint}")
        return False
    stop(pid_file)  # a stale or unhealthy instance
    if svc.name == "ray-head":
        # a head that is down took its cluster with it (no GCS fault tolerance): a worker node
        # still running belongs to the dead cluster, and while its raylet names the old GCS
        # address, `ray start --head` refuses it ("already running"; measured: the worker kept
        # reconnecting 27 s after the head was SIGKILLed). It has nothing to shut down cleanly
        # (2 s grace); it is started again in the next wave, joining the new head.
        stop(_files(cfg, "ray-worker")[1], grace_s=2.0)
        _forget_ray_cluster(cfg)
    start(svc.argv, svc.env, log, pid_file, cfg.root)
    return True


def _forget_ray_cluster(cfg: ServicesConfig) -> None:
    """A SIGTERM'd `ray start` leaves /tmp/ray/ray_current_cluster naming its GCS; a later plain
    ray.init() on this machine would then try to join that dead cluster. Remove it if it is ours."""
    marker = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
    try:
        if marker.read_text().strip().endswith(f":{cfg.ray_port}"):
            marker.unlink()
    except OSError:
        pass


def down(cfg: ServicesConfig, echo: Callable[[str], None]) -> None:
    """Stop the services, wave by wave in reverse (the compute before the store it writes to), each
    wave's at once: measured 13.5 s one at a time."""
    for wave in reversed(waves(plan(cfg))):
        wave = wave[::-1]
        stopped = stop_all([(_files(cfg, svc.name)[1], svc.stop_grace_s) for svc in wave])
        for svc, was_running in zip(wave, stopped):
            echo(f"{svc.name:<11} {'stopped' if was_running else 'not running'}")
    _forget_ray_cluster(cfg)
    if not cfg.s3_endpoint:
        echo(f"the bucket is kept in {cfg.s3_data}; `ganpipe services up` serves it again")


def status(cfg: ServicesConfig) -> list[dict]:
    rows = []
    for svc in plan(cfg):
        log, pid_file = _files(cfg, svc.name)
        pid = pid_of(pid_file)
        state = "stopped" if pid is None else ("healthy" if svc.health() else "unhealthy")
        rows.append({"name": svc.name, "state": state, "pid": pid, "endpoint": svc.endpoint, "log": str(log)})
    return rows
