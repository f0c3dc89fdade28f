"""Where the default run's wall time goes: `ganpipe run` in a throwaway workspace (a git + DVC copy of
this one, embedded services, its own GANPIPE_HOME), timed from outside, with the parts the run itself
records (flows.stages.records.timed, logged as MLflow metrics timing/<part>_s on the training run).

    ray_start       ray.init of the embedded instance      mlflow_run   opening the MLflow run (train stage)
    ray_train_fit   TorchTrainer.fit: worker group + loop  evaluation   the evaluate stage (FID etc.)
    ray_stop        ray.shutdown                           register_mlflow  the register stage (MLflow registry)
    dvc             every dvc commit/push and the repo     prepare      the prepare stage when it runs
    flow_body       the whole flow function

The training loop's own time is steps x batch / its steady images/s (MLflow train/images_per_s), so the
worker group's start-up and tear-down is ray_train_fit minus that; Prefect's share is the process wall
time minus everything the flow body spent outside Prefect (its start-up, the task machinery, the CLI).

    .venv/bin/python benchmarks/orchestration.py [section.field=value ...]   (default: params.yaml as is)
    .venv/bin/python benchmarks/orchestration.py --workspace WS   (the newest run of WS; wall = its flow body)
writes benchmarks/results/orchestration.{json,md}
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import table, write_report  # noqa: E402

BIN = Path(sys.executable).parent
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", "data/catalog.yaml",
        "flows", "gan_core"]  # the code is a dependency of every dvc.yaml stage


def workspace(tmp: Path) -> Path:
    """A committed git + DVC workspace with this project's params.yaml (the default run's settings)."""
    ws = tmp / "ws"
    for rel in COPY:
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "workspace"]):
        subprocess.run(git + args, cwd=ws, check=True)
    return ws


def env_for(ws: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_", "GANPIPE_"))}
    env.update(GANPIPE_WORKSPACE=str(ws), GANPIPE_HOME=str(ws / ".ganpipe"), PYTHONUNBUFFERED="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def recorded(env: dict) -> tuple[dict[str, float], dict]:
    """The timing/* metrics of the newest training run, and its steps, batch and steady images/s."""
    from flows.ops.settings import load_settings
    from flows.registry.tracking import client

    s = load_settings(env)
    c = client(s.mlflow_uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], order_by=["attributes.start_time DESC"],
                         max_results=1)
    if not runs:
        raise RuntimeError(f"no MLflow run in {s.mlflow_uri}: did the pipeline run?")
    run = runs[0]
    spent = {k.removeprefix("timing/").removesuffix("_s"): v for k, v in run.data.metrics.items()
             if k.startswith("timing/")}
    rates = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "train/images_per_s"), key=lambda m: m.step)]
    steady = sorted(rates[1:] or rates)[len(rates[1:] or rates) // 2] if rates else 0.0
    params = run.data.params
    scores = {k: v for k, v in run.data.metrics.items() if not k.startswith(("train/", "timing/", "monitor/"))}
    return spent, {"steps": int(params.get("train.steps", 0)), "batch": int(params.get("train.batch_size", 0)),
                   "images_per_s": steady, "scores": scores}


def breakdown(wall: float, spent: dict[str, float], train: dict) -> dict[str, float]:
    loop = train["steps"] * train["batch"] / train["images_per_s"] if train["images_per_s"] else 0.0
    body = spent.get("flow_body", 0.0)
    parts = {"training loop (steady rate)": loop,
             "Ray start (ray.init)": spent.get("ray_start", 0.0),
             "Ray worker group start/stop (fit - loop)": max(0.0, spent.get("ray_train_fit", 0.0) - loop),
             "Ray stop": spent.get("ray_stop", 0.0),
             "MLflow (open run + register stage)": spent.get("mlflow_run", 0.0) + spent.get("register_mlflow", 0.0),
             "DVC (repo, commits, pushes)": spent.get("dvc", 0.0),
             "prepare": spent.get("prepare", 0.0),
             "evaluation": spent.get("evaluation", 0.0)}
    inside = sum(v for k, v in spent.items() if k != "flow_body")
    parts["Prefect + CLI (wall - flow's own parts)"] = max(0.0, wall - inside)
    parts["of which outside the flow body (start-up, exit)"] = max(0.0, wall - body)
    return parts


def timed_run(overrides: list[str]) -> tuple[float, dict[str, float], dict]:
    """`ganpipe run` in a throwaway workspace: its wall seconds, what it recorded, its training figures."""
    with tempfile.TemporaryDirectory(prefix="ganpipe-orch-bench-") as tmp:
        ws = workspace(Path(tmp))
        env = env_for(ws)
        t0 = time.perf_counter()
        r = subprocess.run([str(BIN / "ganpipe"), "run", *overrides], cwd=ws, env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"ganpipe run failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return (wall, *recorded(env))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="section.field=value for `ganpipe run` (default: none)")
    ap.add_argument("--workspace", type=Path, help="report the newest run of this workspace, run nothing")
    ap.add_argument("--wall", type=float, help="with --workspace: the run's process wall seconds, if timed outside")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.workspace:
        spent, train = recorded(env_for(args.workspace.resolve()))
        wall = args.wall or spent.get("flow_body", 0.0)  # without --wall: the process's start-up and exit are not in it
    else:
        wall, spent, train = timed_run(args.overrides)
    parts = breakdown(wall, spent, train)
    orchestration = sum(v for k, v in parts.items()
                        if not k.startswith(("training loop", "evaluation", "prepare", "of which")))
    result = {"wall_s": wall, "wall_of": "flow body" if args.workspace and not args.wall else "process", "overrides": args.overrides, "recorded_s": spent, "train": train, "parts_s": parts,
              "orchestration_s": orchestration, "orchestration_fraction": orchestration / wall}
    lines = [f"# Orchestration of `ganpipe run {' '.join(args.overrides)}` ({wall:.0f} s wall, "
             f"{train['steps']} steps at {train['images_per_s']:.0f} images/s)", "",
             f"Orchestration (Ray, MLflow, DVC, Prefect): {orchestration:.1f} s = {100 * orchestration / wall:.0f}% "
             "of the wall time (target: <= 10%).", ""]
    lines += table(["part", "seconds", "% of wall"], [[k, f"{v:.1f}", f"{100 * v / wall:.1f}%"] for k, v in parts.items()])
    write_report("orchestration", result, lines, args.out)
    return result


if __name__ == "__main__":
    main()
