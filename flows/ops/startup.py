"""First use of the databases in GANPIPE_HOME, one process at a time.

Runs started together in one home (several `ganpipe run`s, `serve` beside `run`) would each create
the same SQLite schemas at once. Prefect's temporary API server migrates PREFECT_HOME/prefect.db when
it starts: two starting together raced on the migrations and one printed uvicorn's traceback
(`sqlite3.OperationalError: index ... already exists`, or `duplicate column name`) before Prefect
retried. MLflow creates mlflow.db's tables and default experiment on the first client call: three
processes at once on a fresh file, measured here, left two with `alembic CommandError: Online migration
expected to match one row`. Under one flock in GANPIPE_HOME each process does this in turn; the later
ones find the schemas current, and their migrations are no-ops."""
from __future__ import annotations

import os
from typing import Callable

from flows.ops.locks import file_lock
from flows.ops.settings import Settings


def lock_path(s: Settings):
    return s.home / "locks" / "startup.lock"


def start_shared_state(s: Settings, on_wait: Callable[[str], None] | None = None) -> None:
    """Start Prefect's temporary server (embedded mode) and open MLflow's SQLite store (a local
    tracking URI), under the start-up lock; a no-op for what runs on servers. Call after
    configure_environment and before anything else touches Prefect or MLflow."""
    embedded_prefect = not os.environ.get("PREFECT_API_URL")
    sqlite_mlflow = s.mlflow_uri.startswith("sqlite:")
    if not (embedded_prefect or sqlite_mlflow):
        return
    with file_lock(lock_path(s), holder=f"ganpipe pid {os.getpid()} starting", on_wait=on_wait):
        if embedded_prefect:
            from prefect.client.orchestration import get_client

            # the same call Prefect makes on first use: it starts the temporary server (a process
            # singleton: the flow run reuses it) and waits until it answers, migrations done
            with get_client(sync_client=True) as client:
                if (error := client.api_healthcheck()) is not None:
                    raise error
        if sqlite_mlflow:
            from flows.registry.tracking import client

            client(s.mlflow_uri).search_experiments(max_results=1)  # creates and migrates the tables
