"""Servers a team shares, started for the tests on 127.0.0.1: one MLflow server (SQLite) and one
Prefect server. One pair serves the whole session (tests/conftest.py `servers`)."""
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from infra.process import http_ok, start, stop, wait_healthy

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def team_servers(root: Path):
    """One MLflow server (SQLite) and one Prefect server on 127.0.0.1: what a team's machines share."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GANPIPE_"))}
    mp, pp = free_port(), free_port()
    plan = {
        "mlflow": ([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mp), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                    "--default-artifact-root", str(root / "artifacts")],
                   {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
                   f"http://127.0.0.1:{mp}/health"),
        "prefect": ([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pp)],
                    {**base, "PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     "PREFECT_UI_ENABLED": "false"},
                    f"http://127.0.0.1:{pp}/api/health"),
    }
    files = {n: (root / f"{n}.log", root / f"{n}.pid") for n in plan}
    try:
        for n, (argv, env, _) in plan.items():  # both start at once, then each is waited for
            start(argv, env, files[n][0], files[n][1], root)
        for n, (_, _, url) in plan.items():
            wait_healthy(n, lambda url=url: http_ok(url), files[n][1], files[n][0], 180)
        yield {"mlflow": f"http://127.0.0.1:{mp}", "prefect": f"http://127.0.0.1:{pp}/api"}
    finally:
        for _, pid_file in files.values():
            stop(pid_file)
