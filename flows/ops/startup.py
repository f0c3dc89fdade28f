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
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from flows.ops.locks import file_lock
from flows.ops.settings import Settings


def lock_path(s: Settings):
    return s.home / "locks" / "startup.lock"


def start_shared_state(s: Settings, on_wait: Callable[[str], None] | None = None) -> None:
    """Start Prefect's temporary server (embedded mode) and open MLflow's SQLite store (a local
    tracking URI), under the start-up lock; a no-op for what runs on servers. Call after
    configure_environment and before anything else touches Prefect or MLflow."""
    with starting_shared_state(s, on_wait):
        pass


@contextmanager
def starting_shared_state(s: Settings, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """start_shared_state, with the caller's block run while Prefect's temporary server boots.

    The server is a process of its own that spends ~2.8 s starting; meanwhile `ganpipe run` imports
    torch, MLflow and the stages, then opens MLflow's store (measured: 5.5 s for the server and the
    store after 3.6 s of imports, one after the other). The block must not touch Prefect's API or
    MLflow: both are ready only once it has returned."""
    embedded_prefect = not os.environ.get("PREFECT_API_URL")
    sqlite_mlflow = s.mlflow_uri.startswith("sqlite:")
    if not (embedded_prefect or sqlite_mlflow):
        yield
        return
    with file_lock(lock_path(s), holder=f"ganpipe pid {os.getpid()} starting", on_wait=on_wait):
        boot = _PrefectBoot() if embedded_prefect else None
        try:
            yield
            if sqlite_mlflow:
                from flows.registry.tracking import client

                client(s.mlflow_uri).search_experiments(max_results=1)  # creates and migrates the tables
        except BaseException:
            if boot is not None:
                boot.join(raise_error=False)  # the block's own error is the one to report
            raise
        if boot is not None:
            boot.join()


class _PrefectBoot:
    """Prefect's temporary server started on a thread, by the call Prefect's get_client makes on first
    use (a process singleton: the flow run reuses it), which waits until it answers, migrations done."""

    def __init__(self):
        # imported here, not on the thread: two threads importing one package's modules at once can
        # deadlock on their import locks, and the caller's block imports Prefect too
        from prefect.server.api.server import SubprocessASGIServer

        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(SubprocessASGIServer(),),
                                        name="prefect-server-start", daemon=True)
        self._thread.start()

    def _start(self, server) -> None:
        try:
            server.start()
        except BaseException as e:  # handed to the caller's thread by join()
            self._error = e

    def join(self, raise_error: bool = True) -> None:
        self._thread.join()
        if not raise_error:
            return
        if self._error is not None:
            raise self._error
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:  # the server get_client started, now answering
            if (error := client.api_healthcheck()) is not None:
                raise error
