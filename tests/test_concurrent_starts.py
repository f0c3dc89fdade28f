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

from flows.ops.startup import starting_shared_state

# as `ganpipe run`: its stages are imported while the temporary server's process boots
with starting_shared_state(s, lambda who: typer.echo(f"waiting for another start-up: {who}", err=True)):
    from flows.registry.tracking import client
    from prefect import flow

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


BLOCK = """
from flows.cli.app import cli_settings
s = cli_settings()
from flows.ops.startup import starting_shared_state
with starting_shared_state(s):
    {block}
print("started")
"""


def _start(ws, block: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(block=block)], cwd=ws, env={**env_for(ws), **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


def test_an_error_in_the_block_is_the_one_reported_after_the_server_start_is_waited_for(tmp_path):
    ws = make_workspace(tmp_path)
    # a fresh home's server migrates for seconds, so its start fails too: the block's error must still win
    done = _start(ws, "raise ValueError('the block failed')", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    assert done.returncode == 1 and "started" not in done.stdout, done.stderr[-4000:]
    assert done.stderr.rstrip().endswith("ValueError: the block failed"), done.stderr[-4000:]
    assert "Timed out" not in done.stderr, done.stderr[-4000:]


def test_a_server_that_does_not_start_fails_the_start_up_with_prefects_reason(tmp_path):
    ws = make_workspace(tmp_path)
    done = _start(ws, "pass", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    assert done.returncode == 1 and "started" not in done.stdout, done.stderr[-4000:]
    assert "Timed out while attempting to connect to ephemeral Prefect API server" in done.stderr, done.stderr[-4000:]
    again = _start(ws, "pass")  # the start-up lock was released: the next start goes through
    assert again.returncode == 0 and "started" in again.stdout, again.stderr[-4000:]
