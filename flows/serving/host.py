"""The process that holds an embedded Ray instance for `ganpipe deploy up` when no RAY_ADDRESS is
set: Serve's actors live as long as the Ray instance that runs them, and an embedded instance
(address="local") is stopped by ray.shutdown or the exit of the process that started it. So the CLI
starts this detached process, which starts Ray and the application, writes the state file
(pid, port, Ray address) once the application is running, and on SIGTERM (`deploy down`) shuts
Serve and Ray down and removes the file. `python -m flows.serving.host CONFIG.json STATE.json`."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path


def write_state(path: Path, state: dict) -> None:
    from gan_core.files import write_bytes_atomic

    write_bytes_atomic(path, json.dumps(state, indent=2, sort_keys=True).encode())


def config_from(path: Path):
    from flows.serving.app import ServeConfig

    raw = json.loads(path.read_text())
    return ServeConfig(**{**raw, "names": tuple(raw["names"])})


def start(cfg, address: str | None) -> str:
    """Ray (embedded, or the cluster at `address`) and the application, running and healthy; returns
    the Ray (GCS) address another driver connects to."""
    import ray
    from ray import serve

    from flows.serving.app import APP_NAME, build

    if address:
        # replicas log on the cluster (its session logs); streamed here they would flood `deploy up`
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:  # address="local": always a fresh instance, never whatever cluster /tmp/ray last recorded
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    serve.run(build(cfg), name=APP_NAME, route_prefix="/", blocking=False)  # returns once every replica is up
    return ray.get_runtime_context().gcs_address


def main(config_path: str, state_path: str) -> int:
    cfg, state = config_from(Path(config_path)), Path(state_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        address = start(cfg, None)
    except Exception as e:
        write_state(state, {"pid": os.getpid(), "error": f"{type(e).__name__}: {e}"})
        return 1
    write_state(state, {"mode": "embedded", "pid": os.getpid(), "port": cfg.port, "ray_address": address,
                        "names": list(cfg.names)})
    stop.wait()
    from ray import serve
    import ray

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        state.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
