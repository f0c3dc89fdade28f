"""Where things live and which services to talk to: read once from the environment.

The workspace is the DVC project (params.yaml, dvc.yaml, data/, models/, reports/); GANPIPE_HOME holds
everything that is not versioned in git: the MLflow database and artifacts, Ray's run storage with
every checkpoint, the Prefect database, the local DVC remote and logs. Pointing a test or a user at a
different home isolates a run completely; pointing the URIs at servers switches from the embedded
defaults to real services without code changes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Settings:
    workspace: Path
    home: Path
    mlflow_uri: str
    ray_address: str | None  # None: start a local Ray instance for the run
    dvc_remote: str  # name of the DVC remote to push to
    dvc_remote_url: str | None  # configured in .dvc/config.local when set: a folder, or s3://bucket/prefix
    ray_storage: str  # Ray Train run storage: a folder, or s3://bucket/prefix so any node can resume
    from_file: dict[str, str] = field(default_factory=dict)  # GANPIPE_ENV_FILE values the environment lacked

    @property
    def params_file(self) -> Path:
        return self.workspace / "params.yaml"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def mlflow_artifact_root(self) -> str | None:
        """Where new experiments keep their files: under GANPIPE_HOME with a local database (else MLflow
        would use ./mlruns of whatever folder the process runs in); a tracking server's own root otherwise."""
        return self.mlflow_artifacts.as_uri() if self.mlflow_uri.startswith(("sqlite:", "file:")) else None

    def prepared_dir(self, dataset: str) -> Path:
        return self.workspace / "data" / "prepared" / dataset

    @property
    def candidate_dir(self) -> Path:
        return self.workspace / "models" / "candidate"

    @property
    def reports_dir(self) -> Path:
        return self.workspace / "reports"


def find_workspace(start: Path) -> Path:
    for d in (start, *start.parents):
        if (d / "dvc.yaml").is_file() and (d / "params.yaml").is_file():
            return d
    raise SettingsError(f"no workspace (a folder with dvc.yaml and params.yaml) at or above {start}; "
                        "run ganpipe from the project folder or set GANPIPE_WORKSPACE")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as written by `ganpipe services up` (shell-quoted values, # comments)."""
    import shlex

    try:
        text = path.read_text()
    except OSError as e:
        raise SettingsError(f"GANPIPE_ENV_FILE: cannot read {path}: {e.strerror}") from e
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.removeprefix("export ").partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise SettingsError(f"{path}:{n}: expected KEY=VALUE")
        words = shlex.split(raw) if raw else [""]
        out[key.strip()] = words[0] if words else ""
    return out


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    # the services profile: a file of settings; anything set in the environment itself wins
    from_file = {k: v for k, v in read_env_file(Path(env["GANPIPE_ENV_FILE"])).items() if k not in env} \
        if env.get("GANPIPE_ENV_FILE") else {}
    env.update(from_file)
    from flows.ops.drills import DrillsRefused, check_profile

    try:
        check_profile(env)
    except DrillsRefused as e:
        raise SettingsError(str(e)) from e
    ws = Path(env["GANPIPE_WORKSPACE"]).resolve() if env.get("GANPIPE_WORKSPACE") else find_workspace(Path.cwd())
    home = Path(env.get("GANPIPE_HOME") or ws / ".ganpipe").resolve()
    remote = env.get("GANPIPE_DVC_REMOTE", "ganpipe-local")
    # the embedded remote is a folder under GANPIPE_HOME; any other remote is either configured
    # here (GANPIPE_DVC_REMOTE_URL, e.g. s3://bucket/dvc with AWS_ENDPOINT_URL) or in .dvc/config
    remote_url = env.get("GANPIPE_DVC_REMOTE_URL") or (str(home / "dvc-remote") if remote == "ganpipe-local" else None)
    return Settings(
        workspace=ws,
        home=home,
        mlflow_uri=env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
        ray_address=env.get("RAY_ADDRESS") or None,
        dvc_remote=remote,
        dvc_remote_url=remote_url,
        ray_storage=env.get("GANPIPE_RAY_STORAGE") or str(home / "ray_results"),
        from_file=from_file,
    )


def configure_environment(s: Settings) -> None:
    """Set the variables Prefect, MLflow and Ray read at import/start. Must run before they are imported.
    Values the user set win (setdefault), except the Prefect home, which follows GANPIPE_HOME."""
    s.home.mkdir(parents=True, exist_ok=True)
    for k, v in s.from_file.items():  # boto3, DVC, MLflow and Prefect read these from the environment
        os.environ.setdefault(k, v)
    os.environ["GANPIPE_WORKSPACE"] = str(s.workspace)
    os.environ["GANPIPE_HOME"] = str(s.home)
    os.environ.setdefault("PREFECT_HOME", str(s.home / "prefect"))
    # measured: the ephemeral API's first start runs DB migrations for ~20 s, past the 20 s default
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # else "database is locked"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("MLFLOW_TRACKING_URI", s.mlflow_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # a tqdm bar per model load; the commands print their own progress, and a bar on stderr reads as noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # measured: each ray.train.report blocks ~2 s at the default 2 s health-check interval
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if s.ray_address is None:
        # a local instance started for this run only: token auth protects shared clusters, not this
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray starts workers at nice 15 so its daemons stay responsive; here training is the only
        # work, and at nice 15 the dashboard and helper actors preempted it (measured: 0.80 of a
        # plain loop's images/s with 1 worker). A real cluster keeps its own setting.
        os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    drop_unused_credentials(s)


# credentials that only a server reads
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
PREFECT_CREDENTIALS = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")


def drop_unused_credentials(s: Settings) -> list[str]:
    """Remove from this process's environment the credentials of services the run does not use, and
    return their names. An embedded MLflow store ignores MLFLOW_TRACKING_USERNAME for auth, yet MLflow
    records it as the `mlflow.user` tag of every logged model; and whatever stays in os.environ is
    inherited by the Ray workers and DVC subprocesses this process starts. Least privilege: keep
    only what a configured server needs."""
    unused = []
    if not s.mlflow_uri.startswith(("http://", "https://", "databricks")):
        unused += MLFLOW_CREDENTIALS
    if not os.environ.get("PREFECT_API_URL"):  # the ephemeral API in this process: no auth
        unused += PREFECT_CREDENTIALS
    return [k for k in unused if os.environ.pop(k, None) is not None]


def without_password(uri: str) -> str:
    """A URI safe to show or hand on: `https://user:pw@host/x` -> `https://host/x`. Credentials
    travel in MLFLOW_TRACKING_USERNAME/PASSWORD, never inside a URI that lands in logs or artifacts."""
    from urllib.parse import urlparse

    p = urlparse(uri)
    return p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() if "@" in p.netloc else uri
