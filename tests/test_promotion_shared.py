"""Promotion across machines: two promoters in separate processes, each with its own workspace and
GANPIPE_HOME (so no flock file in common), against one real MLflow server and one real Prefect
server started here. With the Prefect server's lock the champion ends on the best candidate (with
each home's file lock forced in its place, checked by hand, the worse one overwrites it: no test for
that, since whether the second read lands before the first write is timing). GANPIPE_FAULT_PROMOTE_DELAY widens
the window between reading the champion and moving the alias (tests/test_faults_registry.py is the
same race on one machine)."""
import json
import multiprocessing
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_faults_registry import _check_outcome

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DELAY = 2.0  # seconds a promoter holds between reading the champion and moving the alias


def cli_settings(root: Path, mlflow_uri: str):
    """A workspace and a GANPIPE_HOME of one machine."""
    from flows.ops.settings import Settings

    ws, home = root / "ws", root / "home"
    ws.mkdir(parents=True), home.mkdir()
    return Settings(workspace=ws, home=home, mlflow_uri=mlflow_uri, ray_address=None, dvc_remote="ganpipe-local",
                    dvc_remote_url=None, ray_storage=str(home / "ray_results"))


def _race_registry(uri: str, name: str) -> dict[float, str]:
    """Champion FID 15, candidates FID 10 and 12, one fingerprint (as test_faults_registry's, with a
    remote source: the server refuses local paths). Returns {fid: version}."""
    from flows.registry.tracking import CHAMPION, client

    c = client(uri)
    c.create_registered_model(name)
    versions = {fid: str(c.create_model_version(name, source=f"s3://race/{name}/{fid}", tags={
        "eval.fid": repr(fid), "eval.fingerprint_id": "fp"}).version) for fid in (15.0, 10.0, 12.0)}
    c.set_registered_model_alias(name, CHAMPION, versions[15.0])
    return versions


def _promoter(settings, name: str, version: str, fid: float, go) -> None:
    """One machine's promotion (a spawned process; PREFECT_API_URL inherited)."""
    from flows.registry.gate import Scored
    from flows.stages.register import promote, promote_lock_path
    from flows.registry.tracking import client

    c = client(settings.mlflow_uri)
    if not go.wait(120):
        raise TimeoutError("never told to go")
    promote(c, name, version, Scored(fid, "fp", version), 0.0, promote_lock_path(settings, name))


def _wait_for_server_holder(api: str, limit: str, timeout: float = 60.0) -> None:
    """Until the Prefect server shows the limit's slot taken: the first promoter holds the lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/v2/concurrency_limits/{limit}", timeout=5) as r:
                if json.load(r)["active_slots"] == 1:
                    return
        except OSError:  # 404 until the first promoter created it
            pass
        time.sleep(0.02)
    raise AssertionError(f"{limit}: the first promoter never took the server's lock")


def _race(tmp_path, servers, monkeypatch, name: str) -> tuple[dict, float]:
    """FID 10 promotes first; once it holds its lock, FID 12 goes (both from the FID 15 champion)."""
    monkeypatch.setenv("PREFECT_API_URL", servers["prefect"])  # inherited by the spawned promoters
    monkeypatch.setenv("GANPIPE_FAULT_PROMOTE_DELAY", str(DELAY))
    a, b = cli_settings(tmp_path / "machine-a", servers["mlflow"]), cli_settings(tmp_path / "machine-b", servers["mlflow"])
    versions = _race_registry(servers["mlflow"], name)
    ctx = multiprocessing.get_context("spawn")
    go_a, go_b = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_promoter, args=(a, name, versions[10.0], 10.0, go_a)),
             ctx.Process(target=_promoter, args=(b, name, versions[12.0], 12.0, go_b))]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    go_a.set()
    _wait_for_server_holder(servers["prefect"], f"ganpipe-promote-{name}")
    go_b.set()
    for p in procs:
        p.join(180)
        assert not p.is_alive() and p.exitcode == 0
    return versions, time.monotonic() - t0


def test_promoters_on_two_machines_share_the_prefect_servers_lock(tmp_path, servers, monkeypatch):
    name = "shared-race"
    versions, elapsed = _race(tmp_path, servers, monkeypatch, name)
    _check_outcome(servers["mlflow"], name, versions, first=10.0)  # v(12) decided against the new champion
    assert elapsed >= 2 * DELAY  # the second waited for the first: serialised, not interleaved
