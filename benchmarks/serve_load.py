"""`ganpipe deploy` under load on loopback: a bounded async client (aiohttp, CONCURRENCY requests in
flight) against the served champion, at 1 and 2 model replicas and a few images per request:
requests/s, p50/p99 latency, 5xx and other failures; then, at 2 replicas, one replica killed
(ray.kill) mid-load: failed requests and seconds until every request succeeds again.
The model is an untrained DCGAN at 32x32x3 with the default widths (params.yaml's model section),
registered in a throwaway GANPIPE_HOME: serving cost does not depend on training.
    .venv/bin/python benchmarks/serve_load.py [--seconds 10] [--replicas 1,2] [--sizes 1,4,16] [--no-kill]
    .venv/bin/python benchmarks/serve_load.py --attach PORT --name MODEL [...]   (a running deployment: load only)
writes benchmarks/results/serve_load.{json,md}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402

BIN = Path(sys.executable).parent
NAME = "bench-serve-dcgan"
CONCURRENCY = 4
SIZES = (1, 4, 16)  # images per request
REPLICAS = (1, 2)
CPUS = 0.5  # reserved per replica: 2 replicas fit the 2 cores with the ingress and proxy at 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(tmp: Path) -> dict:
    """A workspace and home with one registered untrained model; the environment the CLI runs in."""
    import shutil

    from flows.ops.settings import load_settings
    from flows.serving.untrained import register_untrained
    from gan_core.config import PipelineConfig

    ws = tmp / "ws"
    ws.mkdir()
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, ws / f)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "GANPIPE_"))}
    env.update(GANPIPE_WORKSPACE=str(ws), GANPIPE_HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
    s = load_settings(env)
    cfg = PipelineConfig.from_dict({"data": {"resolution": 32, "channels": 3}, "model": {"arch": "dcgan"}})
    register_untrained(s, NAME, cfg, seed=0)
    return env


def ganpipe(env: dict, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "ganpipe"), *args], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"ganpipe {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


async def load(port: int, n: int, seconds: float, events: list | None = None, name: str = NAME) -> dict:
    """CONCURRENCY workers posting back to back for `seconds`; `events` collects (t, status)."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/models/{name}:generate"
    latencies, statuses = [], {}
    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)

    async def worker(i: int, session) -> None:
        k = 0
        while time.perf_counter() - t0 < seconds:
            start = time.perf_counter()
            try:
                async with session.post(url, json={"n": n, "seed": i * 100000 + k}) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status = type(e).__name__
            end = time.perf_counter()
            k += 1
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(end - start)
            if events is not None:
                events.append((end - t0, status))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout) as session:
        await asyncio.gather(*(worker(i, session) for i in range(CONCURRENCY)))
    wall = time.perf_counter() - t0
    latencies.sort()

    def q(p: float) -> float:  # the p-quantile in ms (nearest rank)
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    ok = statuses.get(200, 0)
    return {"n": n, "requests": sum(statuses.values()), "ok": ok, "rps": ok / wall,
            "images_per_s": ok * n / wall, "p50_ms": q(0.50), "p99_ms": q(0.99),
            "5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
            "other_failures": sum(v for k, v in statuses.items() if k != 200 and not (isinstance(k, int) and k >= 500)),
            "statuses": {str(k): v for k, v in statuses.items()}}


def replica_handle(state: dict):
    """Connected to the deployment's Ray instance: (a model replica's actor handle, its name)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the embedded instance was started
    ray.init(address=state["ray_address"], logging_level="ERROR", log_to_driver=False)
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if f"model-{NAME}" in a["name"] and "REPLICA" in a["name"])
    return ray.get_actor(name, namespace="serve")


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications["ganpipe"]
    return app.deployments[f"model-{NAME}"].replica_states.get("RUNNING", 0)


async def kill_under_load(port: int, state: dict, seconds: float) -> dict:
    """Load for `seconds`; a quarter in, one of the two model replicas is killed. Failed requests,
    and seconds until Serve reports two running replicas again."""
    import ray

    handle = replica_handle(state)
    try:
        events: list = []
        t0 = time.perf_counter()
        task = asyncio.create_task(load(port, 4, seconds, events))
        await asyncio.sleep(seconds / 4)  # the load is running: now the kill
        ray.kill(handle, no_restart=True)
        killed_at = time.perf_counter() - t0  # on the load's clock (it started within ms of t0)
        replaced = None
        while replaced is None and time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.5)  # polling Serve's status while the load runs
            if await asyncio.to_thread(running_replicas) == 2 and time.perf_counter() - t0 > killed_at + 1:
                replaced = time.perf_counter() - t0 - killed_at
        result = await task
    finally:
        ray.shutdown()
    failed = [t for t, s in events if s != 200]
    result.update(failed=len(failed), killed_at_s=killed_at, replaced_after_s=replaced,
                  requests_after_kill=sum(1 for t, _ in events if t > killed_at))
    return result


def attached(port: int, name: str, sizes: list[int], seconds: float, out: Path) -> dict:
    """Load an already running deployment (whatever its replicas): one row per request size."""
    points = [asyncio.run(load(port, n, seconds, name=name)) for n in sizes]
    result = {"concurrency": CONCURRENCY, "seconds_per_point": seconds, "model": name, "attached_port": port,
              "points": points, "kill": None}
    lines = [f"# Serving load on a running deployment: {CONCURRENCY} requests in flight, {seconds:.0f} s per point", ""]
    lines += table(["n per request", "requests/s", "images/s", "p50 ms", "p99 ms", "5xx", "other failures"],
                   [[p["n"], f"{p['rps']:.1f}", f"{p['images_per_s']:.0f}", f"{p['p50_ms']:.0f}", f"{p['p99_ms']:.0f}",
                     p["5xx"], p["other_failures"]] for p in points])
    write_report("serve_load", result, lines, out)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="load per point")
    ap.add_argument("--replicas", default=",".join(map(str, REPLICAS)))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="images per request")
    ap.add_argument("--no-kill", action="store_true", help="skip killing a replica under load (needs 2 replicas)")
    ap.add_argument("--attach", type=int, help="port of a running `ganpipe deploy`: load it, deploy nothing")
    ap.add_argument("--name", default=NAME, help="with --attach: the served model to request")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    seconds, sizes = args.seconds, [int(n) for n in args.sizes.split(",")]
    if args.attach:
        return attached(args.attach, args.name, sizes, seconds, args.out)
    rows, result = [], {"concurrency": CONCURRENCY, "seconds_per_point": seconds, "cpus_per_replica": CPUS,
                        "model": "dcgan 32x32x3 (default widths, untrained)", "points": [], "kill": None}
    with tempfile.TemporaryDirectory(prefix="ganpipe-serve-bench-") as tmp:
        env = setup(Path(tmp))
        for replicas in (int(r) for r in args.replicas.split(",")):
            port = free_port()
            t = time.perf_counter()
            ganpipe(env, "deploy", "up", "--name", NAME, "--port", str(port), "--replicas", str(replicas),
                    "--cpus", str(CPUS))
            up_s = time.perf_counter() - t
            try:
                asyncio.run(load(port, 1, min(2.0, seconds)))  # warm the connection path
                for n in sizes:
                    p = {"replicas": replicas, "up_s": up_s, **asyncio.run(load(port, n, seconds))}
                    result["points"].append(p)
                    rows.append([replicas, n, f"{p['rps']:.1f}", f"{p['images_per_s']:.0f}", f"{p['p50_ms']:.0f}",
                                 f"{p['p99_ms']:.0f}", p["5xx"], p["other_failures"]])
                    print(rows[-1], flush=True)
                if replicas == 2 and not args.no_kill:
                    state = json.loads((Path(env["GANPIPE_HOME"]) / "serve" / "state.json").read_text())
                    result["kill"] = asyncio.run(kill_under_load(port, state, max(seconds, 40.0)))
            finally:
                ganpipe(env, "deploy", "down")
    k = result["kill"]
    head = ["replicas", "n per request", "requests/s", "images/s", "p50 ms", "p99 ms", "5xx", "other failures"]
    lines = [f"# Serving load: {CONCURRENCY} requests in flight, {seconds:.0f} s per point, {CPUS} CPU per replica",
             "", f"Model: {result['model']}; deploy up took "
             + " and ".join(sorted({f"{p['up_s']:.0f} s ({p['replicas']} replicas)" for p in result["points"]})) + ".",
             "",
             *table(head, rows)]
    if k:
        replaced = "more than the run" if k["replaced_after_s"] is None else f"{k['replaced_after_s']:.1f} s"
        lines += ["", f"Replica killed mid-load (2 replicas, n=4, {k['requests']} requests over "
                  f"{max(seconds, 40.0):.0f} s, kill at {k['killed_at_s']:.1f} s, {k['requests_after_kill']} requests after it): {k['failed']} failed "
                  f"({k['statuses']}); Serve had 2 running replicas again after {replaced}; p99 {k['p99_ms']:.0f} ms."]
    write_report("serve_load", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
