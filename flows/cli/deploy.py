"""`ganpipe deploy up|down|status`: the champion of registered models served over HTTP by Ray Serve.

Where it runs: with RAY_ADDRESS (the services' Ray cluster) the application is deployed there and
outlives this command, as Serve applications on a cluster do. Without it, a detached host process
(flows/serving/host.py) holds an embedded Ray instance for as long as the application serves; its
pid, port and Ray address are in GANPIPE_HOME/serve/state.json, which `status` and `down` read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

import typer

from flows.cli.app import app, cli_settings, fail

deploy_app = typer.Typer(no_args_is_help=True, help="Serve the champion of registered models over HTTP "
                                                    "(Ray Serve on 127.0.0.1), following the alias.")
app.add_typer(deploy_app, name="deploy")
UP_TIMEOUT_S = 300.0  # Ray start, Serve start, every replica loading and checking its model


def _state_path(s) -> Path:
    return s.home / "serve" / "state.json"


def _read_state(s) -> dict | None:
    try:
        return json.loads(_state_path(s).read_text())
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _healthy(port: int) -> bool:
    try:
        return _get(port, "/healthz", 2.0)[0] == 200
    except (OSError, ValueError):
        return False


@deploy_app.command("up")
def deploy_up(
    name: List[str] = typer.Option(..., "--name", help="registered model to serve (its champion); repeatable"),
    port: int = typer.Option(8000, envvar="GANPIPE_SERVE_PORT", help="HTTP port on 127.0.0.1"),
    replicas: int = typer.Option(1, envvar="GANPIPE_SERVE_REPLICAS", help="replicas per model"),
    min_replicas: Optional[int] = typer.Option(None, envvar="GANPIPE_SERVE_MIN_REPLICAS",
                                               help="autoscaling lower bound (with --max-replicas)"),
    max_replicas: Optional[int] = typer.Option(None, envvar="GANPIPE_SERVE_MAX_REPLICAS",
                                               help="autoscaling upper bound (with --min-replicas)"),
    max_n: int = typer.Option(64, envvar="GANPIPE_SERVE_MAX_N", help="most images one request may ask for"),
    max_body: int = typer.Option(4 * 2**20, envvar="GANPIPE_SERVE_MAX_BODY", help="request body limit, bytes"),
    poll_s: float = typer.Option(2.0, envvar="GANPIPE_SERVE_POLL_S", help="seconds between reads of the alias"),
    cpus: float = typer.Option(1.0, envvar="GANPIPE_SERVE_CPUS", help="CPUs reserved per model replica"),
    gpus: float = typer.Option(0.0, envvar="GANPIPE_SERVE_GPUS",
                               help="GPUs per model replica (1: one replica per GPU, requests batched)"),
    max_batch: int = typer.Option(8, envvar="GANPIPE_SERVE_MAX_BATCH", help="GPU replicas: requests per forward"),
):
    """Serve the champion of each --name; returns once every model answers (GET /healthz is 200)."""
    s = cli_settings()
    from flows.serving.app import ServeConfig

    try:
        cfg = ServeConfig(names=tuple(name), tracking_uri=s.mlflow_uri, port=port, replicas=replicas,
                          min_replicas=min_replicas, max_replicas=max_replicas, max_n=max_n, max_body=max_body,
                          poll_s=poll_s, cpus=cpus, gpus=gpus, max_batch=max_batch)
    except ValueError as e:
        fail(f"deploy up: {e}")
    _check_champions(s.mlflow_uri, cfg.names)
    state = _read_state(s)
    if state and (_alive(state.get("pid", -1)) if state.get("mode") == "embedded" else _healthy(state["port"])):
        fail(f"deploy up: already serving {', '.join(state.get('names', []))} on port {state.get('port')} "
             "(ganpipe deploy down first)")
    path = _state_path(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    started = time.monotonic()
    if s.ray_address:
        _up_on_cluster(cfg, s.ray_address, path)
    else:
        _up_embedded(cfg, path)
    _wait_healthy(cfg.port, started)
    typer.echo(f"serving on http://127.0.0.1:{cfg.port} ({time.monotonic() - started:.1f} s)")
    _print_models(cfg.port)


def _check_champions(tracking_uri: str, names: tuple[str, ...]) -> None:
    """Fail before starting Ray when a name has no champion (a typo, a model never promoted)."""
    from flows.registry.tracking import CHAMPION, champion_version, client

    c = client(tracking_uri)
    for n in names:
        if champion_version(c, n) is None:
            fail(f"deploy up: --name {n}: no version holds the {CHAMPION!r} alias (or no such registered model)")


def _up_embedded(cfg, path: Path) -> None:
    import dataclasses

    config = path.with_name("config.json")
    config.write_text(json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    log = path.with_name("host.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.serving.host", str(config), str(path)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # outlives this command and its terminal
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            proc.wait(timeout=0.5)  # exited: it failed (a running host only exits on SIGTERM)
        except subprocess.TimeoutExpired:
            state = json.loads(path.read_text()) if path.exists() else None
            if state and "error" not in state:
                return
            continue
        break
    state = json.loads(path.read_text()) if path.exists() else {}
    if proc.poll() is None:
        proc.terminate()
    lines = log.read_text(errors="replace").splitlines()
    path.unlink(missing_ok=True)
    # Serve reports a replica that would not start as "failed to update the deployments": the
    # rollout's own line says which version was refused and why
    refused = [ln.strip() for ln in lines if "refused for serving: " in ln]
    why = refused[-1] if refused else state.get("error", "no answer")
    tail = "\n".join(lines[-15:])
    fail(f"deploy up: the application did not start: {why}\n(log {log}):\n{tail}")


def _up_on_cluster(cfg, address: str, path: Path) -> None:
    import ray

    from flows.serving.host import start, write_state

    try:
        gcs = start(cfg, address)
    except Exception as e:
        fail(f"deploy up: the application did not start on the Ray cluster at {address}: {type(e).__name__}: {e}")
    write_state(path, {"mode": "cluster", "port": cfg.port, "ray_address": gcs, "names": list(cfg.names)})
    ray.shutdown()  # the application stays: Serve's controller is a detached actor of the cluster


def _wait_healthy(port: int, started: float) -> None:
    deadline = started + UP_TIMEOUT_S
    while not _healthy(port):
        if time.monotonic() > deadline:
            fail(f"deploy up: GET http://127.0.0.1:{port}/healthz did not answer 200 within {UP_TIMEOUT_S:.0f} s")
        time.sleep(0.5)  # polling a server for readiness


def _print_models(port: int) -> None:
    _, body = _get(port, "/v1/models")
    for m in body.get("models", []):
        typer.echo(f"  {m['name']}  version {m['version']}  {m['metric']}={m['value']}  "
                   f"fingerprint {m['fingerprint'] or '-'}  ({m['family']})")


@deploy_app.command("status")
def deploy_status(as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Each served model's version and fingerprint, and each deployment's replica health."""
    s = cli_settings()
    state = _read_state(s)
    if not state or "error" in state:
        fail("deploy status: nothing is deployed (ganpipe deploy up --name NAME)")
    port = state["port"]
    try:
        health, _ = _get(port, "/healthz")
        _, models = _get(port, "/v1/models")
    except OSError as e:
        fail(f"deploy status: http://127.0.0.1:{port} does not answer ({e}); state {_state_path(s)}")
    out = {"port": port, "mode": state["mode"], "healthy": health == 200, "models": models.get("models", []),
           "deployments": _replicas(state["ray_address"])}
    if as_json:
        typer.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    typer.echo(f"http://127.0.0.1:{port}  {'healthy' if out['healthy'] else 'NOT healthy'}  ({state['mode']} Ray)")
    _print_models(port)
    for d, info in sorted(out["deployments"].items()):
        typer.echo(f"  {d}: {info['status']}  replicas {info['replicas']}")


def _replicas(address: str) -> dict:
    """{deployment: {status, replicas: {state: count}}} from Serve's controller."""
    import ray
    from ray import serve

    from flows.serving.app import APP_NAME

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        app_status = serve.status().applications.get(APP_NAME)
        if app_status is None:
            return {}
        return {name: {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                       "replicas": {str(k.value if hasattr(k, "value") else k): v
                                    for k, v in d.replica_states.items()}}
                for name, d in app_status.deployments.items()}
    finally:
        ray.shutdown()


@deploy_app.command("down")
def deploy_down():
    """Stop serving: the application is deleted (and an embedded Ray instance stopped)."""
    s = cli_settings()
    state = _read_state(s)
    path = _state_path(s)
    if not state:
        typer.echo("nothing deployed")
        return
    if state.get("mode") == "cluster":
        import ray
        from ray import serve

        from flows.serving.app import APP_NAME

        ray.init(address=state["ray_address"], logging_level="ERROR", log_to_driver=False)
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    elif _alive(pid := int(state["pid"])):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for the host's clean shutdown of Serve and Ray
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)  # its own session: only the host and what it started
    path.unlink(missing_ok=True)
    typer.echo("stopped")
