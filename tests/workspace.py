"""A throwaway copy of the project's workspace (git + DVC) for slow tests, isolated by GANPIPE_HOME."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", "data/catalog.yaml",
        "infra/deployments.yaml",
        "gan_core", "flows"]

# a few hundred steps of the real pipeline: mechanics end to end, in about a minute
TINY = {"train": {"steps": 40, "checkpoint_every": 20, "log_every": 10, "batch_size": 32},
        "eval": {"n_fake": 300, "batch_size": 300, "every": 20, "n_cheap": 100}}


def make_workspace(tmp: Path, params: dict | None = None) -> Path:
    ws = tmp / "ws"
    ws.mkdir()
    for rel in COPY:
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    p = yaml.safe_load((ws / "params.yaml").read_text())
    for section, values in (params or TINY).items():
        p[section].update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]
    subprocess.run(git[:1] + ["init", "-q"], cwd=ws, check=True)
    subprocess.run(git + ["add", "-A"], cwd=ws, check=True)
    subprocess.run(git + ["commit", "-qm", "workspace"], cwd=ws, check=True)
    return ws


def env_for(ws: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_", "GANPIPE_")) or k == "GANPIPE_DRILLS"}
    env.update({"GANPIPE_HOME": str(ws / ".ganpipe"), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def ganpipe(ws: Path, *args: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ganpipe"), *args], cwd=ws, env=env_for(ws, **extra_env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
