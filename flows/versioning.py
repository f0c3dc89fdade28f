"""DVC: the workspace's data and checkpoints are versioned by dvc.yaml stages.

The Prefect flow runs a stage's function itself, then `dvc commit`s that stage, which records the
hashes of its dependencies and outputs in dvc.lock and moves the outputs into the DVC cache, exactly
as `dvc repro` would after running the stage's `cmd`. `dvc push` then copies them to the remote.
The CLI is used rather than DVC's Python API: it is DVC's stable interface across versions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from flows.settings import Settings


class VersioningError(RuntimeError):
    pass


def dvc(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=settings.workspace,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VersioningError(f"dvc {' '.join(args)} failed in {settings.workspace} "
                              f"(exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ensure_repo(settings: Settings) -> None:
    """Make the workspace a DVC repo (if it is not) and point the embedded remote at GANPIPE_HOME."""
    if not (settings.workspace / ".dvc").is_dir():
        scm = [] if (settings.workspace / ".git").exists() else ["--no-scm"]
        dvc(settings, "init", "--quiet", *scm)
        dvc(settings, "config", "core.analytics", "false")
    url = settings.dvc_remote_url
    if url is not None:
        if "://" not in url:
            Path(url).mkdir(parents=True, exist_ok=True)
        # --local: the location is this machine's, so it goes to .dvc/config.local, never into git
        dvc(settings, "remote", "add", "--local", "--force", settings.dvc_remote, url)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if url.startswith("s3://") and endpoint:  # an S3-compatible server (MinIO, moto, ...)
            dvc(settings, "remote", "modify", "--local", settings.dvc_remote, "endpointurl", endpoint)


def stage_up_to_date(settings: Settings, stage: str) -> bool:
    """True when dvc.lock records this stage and its params, deps and outs all still match."""
    proc = dvc(settings, "status", stage, "--json", check=False)
    if proc.returncode != 0:
        return False
    try:
        return json.loads(proc.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


def commit(settings: Settings, stage: str) -> None:
    dvc(settings, "commit", "--force", "--quiet", stage)


def push(settings: Settings, *stages: str) -> None:
    dvc(settings, "push", "--quiet", "-r", settings.dvc_remote, *stages)


def locked_out_md5(settings: Settings, stage: str, out_path: Path) -> str | None:
    """The md5 DVC recorded in dvc.lock for one output of a stage (a '.dir' hash for folders)."""
    lock = settings.workspace / "dvc.lock"
    if not lock.is_file():
        return None
    rel = out_path.resolve().relative_to(settings.workspace).as_posix()
    for out in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == rel:
            return out.get("md5")
    return None


def git_commit(settings: Settings) -> str:
    """HEAD of the workspace's git repo, '+dirty' when tracked code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.workspace,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "gan_core", "flows"],
                               cwd=settings.workspace, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
