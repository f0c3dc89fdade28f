"""Processes started together in one fresh GANPIPE_HOME start up exactly as `ganpipe run` does
(flows/ops/startup.py, then a Prefect flow run on the temporary server and an MLflow call): each exits 0
and none prints a traceback. Without the start-up lock, their temporary Prefect servers raced on the
migrations of one SQLite database (uvicorn printed `sqlite3.OperationalError: duplicate column name`
or `index ... already exists`), and fresh MLflow stores failed with alembic's `CommandError`.
A whole `ganpipe run` adds only work done under the workspace lock, one run at a time."""
import subprocess
import sys

import pytest

from workspace import env_for, make_workspace

pytestmark = pytest.mark.slow
RUNS = 3
START = """
import typer
from flows.cli.app import cli_settings
s = cli_settings()  # configures Prefect's and MLflow's environment: before either is imported

from flows.ops.startup import start_shared_state
from flows.registry.tracking import client
from prefect import flow

start_shared_state(s, lambda who: typer.echo(f"waiting for another start-up: {who}", err=True))

@flow
def hello() -> str:
    return "hello"

assert hello() == "hello"
client(s.mlflow_uri).search_experiments()
print("started")
"""


def test_starts_together_in_one_home_are_quiet(tmp_path):
    ws = make_workspace(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", START], cwd=ws, env=env_for(ws), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(RUNS)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out and "started" in out, out[-6000:]
    # they did overlap: the later ones waited for the first start-up
    assert sum("waiting for another start-up" in out for out in outs) >= 1, outs
