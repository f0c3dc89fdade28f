"""DVC: the workspace's data and checkpoints are versioned by dvc.yaml stages.

The Prefect flow runs a stage's function itself, then `dvc commit`s that stage, which records the
hashes of its dependencies and outputs in dvc.lock and moves the outputs into the DVC cache, exactly
as `dvc repro` would after running the stage's `cmd`. `dvc push` then copies them to the remote.
The CLI is used rather than DVC's Python API: it is DVC's stable interface across versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from flows.ops.retry import DVC_PUSH_ATTEMPTS, RetriesExhausted, aws_retry_env, retry
from flows.ops.settings import Settings


class VersioningError(RuntimeError):
    pass


def dvc(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # DVC's S3 client (aiobotocore) reads its retry policy from the environment: bounded standard
    # retries per request unless the user chose (see flows/ops/retry.py for every layer's bound)
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=settings.workspace,
                          capture_output=True, text=True, env=aws_retry_env(dict(os.environ)))
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


# what a failed `dvc push` says when retrying cannot help (checked first), and when it may
PERMANENT = re.compile(r"config file error|doesn't exist|does not exist|NoSuchBucket|AccessDenied|Access Denied|"
                       r"InvalidAccessKeyId|SignatureDoesNotMatch|Unable to locate credentials|"
                       r"InvalidBucketName|no remote specified", re.IGNORECASE)
TRANSIENT = re.compile(r"files? failed to (upload|transfer)|failed to transfer|InternalError|SlowDown|"
                       r"ServiceUnavailable|reduce your request rate|RequestTimeout|Throttl|"
                       r"Could not connect to the endpoint|Connection (was closed|reset|refused|aborted)|"
                       r"timed out|timeout|Bad Gateway|Gateway Timeout|\b50[0234]\b", re.IGNORECASE)


class PushFailed(VersioningError):
    """One `dvc push` that exited non-zero; `transient` when its output looks like S3 trouble that
    another try may get past (5xx, throttling, a dropped connection), not a configuration error."""

    def __init__(self, message: str, returncode: int, output: str):
        super().__init__(message)
        self.returncode, self.output = returncode, output
        errors = [ln.strip() for ln in output.splitlines() if ln.startswith("ERROR")] or [output.strip()]
        # for the retry log: the first cause and DVC's verdict ("N files failed to upload")
        self.summary = errors[0] if len(errors) == 1 else f"{errors[-1]}; first: {errors[0]}"
        self.transient = bool(TRANSIENT.search(output)) and not PERMANENT.search(output)


def push(settings: Settings, *stages: str) -> None:
    """`dvc push` the stages' outputs (all, without stages) to the remote, retried with backoff while
    the failure looks transient. DVC uploads a folder's .dir object only after every file in it, so
    a failed push leaves the remote's recorded state as it was; dvc.lock is never written by push."""
    remote = settings.dvc_remote
    url = f" ({settings.dvc_remote_url})" if settings.dvc_remote_url else ""
    what = f"dvc push {' '.join(stages) or '(all outputs)'} to remote {remote!r}{url}"

    def once() -> None:
        # not --quiet: on failure DVC then says which object failed and why
        proc = dvc(settings, "push", "-r", remote, *stages, check=False)
        if proc.returncode != 0:
            out = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
            raise PushFailed(f"{what} failed in {settings.workspace} (exit {proc.returncode}): {out}",
                             proc.returncode, out)

    try:
        retry(once, what, attempts=DVC_PUSH_ATTEMPTS, base_delay=1.0, max_delay=8.0,
              retry_on=lambda e: isinstance(e, PushFailed) and e.transient)
    except RetriesExhausted as e:
        raise VersioningError(
            f"{what}: failed {e.attempts} attempts in {e.elapsed:.0f} s, giving up. Last error (exit "
            f"{e.last.returncode}): {e.last.output}\nThe remote keeps what it had before this push and dvc.lock "
            f"is not changed by it; push again (`dvc push -r {remote}`) once S3 is healthy.") from e.last


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


def code_version(settings: Settings) -> str:
    """git_commit, plus a hash of the uncommitted diff of the code when dirty: two different sets of
    uncommitted changes are two code versions."""
    commit = git_commit(settings)
    if not commit.endswith("+dirty"):
        return commit
    diff = subprocess.run(["git", "diff", "HEAD", "--", "gan_core", "flows"], cwd=settings.workspace,
                          capture_output=True).stdout
    return f"{commit}.{hashlib.sha256(diff).hexdigest()[:12]}"
