"""The floor under the default run's orchestration: what the stack itself costs with no ganpipe work in it.

Each part in a fresh process, with the environment `ganpipe run` gives it (flows.ops.settings), in a
throwaway home:
    cli_import      python + importing the CLI (flows.cli.app)
    prefect_new     a bare @flow on Prefect's temporary server, first run (it creates its database)
    prefect_again   the same, the database there
    ray_start       ray.init of an embedded instance, as the train stage starts it
    ray_train_fit   a Ray Train fit of an empty loop on `workers` workers (gloo), as the train stage builds it
    ray_stop        ray.shutdown
The floor is cli_import + prefect_again + the Ray parts: a default run pays at least that, so against its
training loop, prepare and evaluation it gives the lowest orchestration share this stack can reach here.

    .venv/bin/python benchmarks/stack_floor.py [--workers 2]
writes benchmarks/results/stack_floor.{json,md}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.orchestration import env_for  # noqa: E402
from benchmarks.report import table, write_report  # noqa: E402

PREAMBLE = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from flows.ops.settings import configure_environment, load_settings
configure_environment(load_settings())
"""

PREFECT = PREAMBLE + """
from prefect import flow

@flow
def bare():
    return 1

t = time.perf_counter()
bare()
print("SECONDS", time.perf_counter() - t)
"""

RAY = PREAMBLE + """
import os, json
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

def empty(config):
    pass

workers, storage = int(sys.argv[1]), sys.argv[2]
out = {}
t = time.perf_counter()
ray.init(address="local", num_cpus=os.cpu_count(), logging_level="WARNING", include_dashboard=False)
out["ray_start"] = time.perf_counter() - t
cpus = max(1, (os.cpu_count() or 1) // workers)
trainer = TorchTrainer(empty, scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
                       torch_config=TorchConfig(backend="gloo"), run_config=RunConfig(name="empty", storage_path=storage))
t = time.perf_counter()
trainer.fit()
out["ray_train_fit"] = time.perf_counter() - t
t = time.perf_counter()
ray.shutdown()
out["ray_stop"] = time.perf_counter() - t
print("SECONDS", json.dumps(out))
"""


def run(code: str, env: dict, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, cwd=env["GANPIPE_WORKSPACE"])
    if r.returncode:
        raise RuntimeError(f"floor probe failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return next(ln.split(" ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("SECONDS "))


def measure(workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ganpipe-floor-") as tmp:
        env = env_for(Path(tmp))  # the orchestration benchmark's: no stray PREFECT_/RAY_/... settings
        parts = {}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import flows.cli.app"],
                       env=env, check=True, cwd=tmp)
        parts["cli_import"] = time.perf_counter() - t
        parts["prefect_new"] = float(run(PREFECT, env))
        parts["prefect_again"] = float(run(PREFECT, env))
        parts.update(json.loads(run(RAY, env, str(workers), str(Path(tmp) / "ray_results"))))
    return parts


def floor_of(parts: dict[str, float]) -> float:
    return sum(v for k, v in parts.items() if k != "prefect_new")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    parts = measure(args.workers)
    result = {"workers": args.workers, "parts_s": parts, "floor_s": floor_of(parts)}
    lines = [f"# The stack's own floor ({args.workers} Ray Train workers, empty loop)", "",
             f"At least {result['floor_s']:.1f} s of every `ganpipe run`: the CLI's imports, a bare Prefect flow on "
             "an existing database, Ray start, an empty Ray Train fit and Ray stop.", ""]
    lines += table(["part", "seconds"], [[k, f"{v:.1f}"] for k, v in parts.items()])
    write_report("stack_floor", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
