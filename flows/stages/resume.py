"""Where a restarted or re-triggered training run continues from: the newest checkpoint in the
run's storage that verifies (hash sidecar, weights-only load, self-consistency).

Ray's record of the latest checkpoint is one input, not the only one: a checkpoint is uploaded to
storage before `ray.train.report` returns, but Ray's controller records it only when it next polls
the workers. A worker group that dies in between (measured: a SIGKILL right after the step-10
report) restarts with `get_checkpoint() is None`, and trusting Ray alone threw away every step
since the previous checkpoint the controller happened to see. So the run folder on storage is
listed too; folders are named checkpoint_<timestamp>, so name order is time order. Torn, partial
or edited folders are skipped, each one named. Rank 0 chooses and broadcasts its choice, so every
rank restores the same step even if the listing were to change underneath them.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from gan_core.checkpoint import CheckpointError, load_checkpoint

CKPT_NAME = "checkpoint.pt"


class NoValidCheckpoint(RuntimeError):
    pass


@dataclass
class ResumePoint:
    checkpoint: dict | None  # None: nothing on storage, a fresh start
    path: str | None  # the checkpoint folder on the run's storage
    skipped: list[str] = field(default_factory=list)  # "<folder>: <why>" for each newer one refused


def run_checkpoints(fs, run_path: str, recorded: str | None = None) -> list[str]:
    """Checkpoint folders of the run at `run_path` on `fs` (pyarrow), newest first, plus the one Ray
    recorded (normally among them already)."""
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(run_path.rstrip("/"), allow_not_found=True))
    found = {i.path.rstrip("/") for i in infos if i.type == pyarrow.fs.FileType.Directory
             and posixpath.basename(i.path.rstrip("/")).startswith("checkpoint_")}
    if recorded:
        found.add(recorded.rstrip("/"))
    return sorted(found, key=posixpath.basename, reverse=True)


def load_folder(fs, path: str) -> dict:
    """Load and verify the checkpoint in one storage folder (downloaded first when remote)."""
    import ray.train

    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as d:
        return load_checkpoint(Path(d) / CKPT_NAME)


def newest_valid(fs, run_path: str, recorded: str | None = None) -> ResumePoint:
    """The newest checkpoint of the run that verifies. A run with checkpoint folders none of which
    verifies is an error (starting over would silently discard the run), naming every folder."""
    skipped: list[str] = []
    folders = run_checkpoints(fs, run_path, recorded)
    for path in folders:
        try:
            return ResumePoint(load_folder(fs, path), path, skipped)
        except (CheckpointError, OSError) as e:
            skipped.append(f"{posixpath.basename(path)}: {e}")
    if folders:
        raise NoValidCheckpoint(f"{run_path}: no valid checkpoint to resume from; skipped " + "; ".join(skipped))
    return ResumePoint(None, None, [])


def agreed_resume_point(fs, run_path: str, recorded: str | None, rank: int, world: int) -> ResumePoint:
    """Rank 0 chooses from storage; the others load the folder it chose (a collective when world > 1)."""
    if world == 1:
        return newest_valid(fs, run_path, recorded)
    import torch.distributed as dist

    point = newest_valid(fs, run_path, recorded) if rank == 0 else None
    choice = [None if point is None else (point.path, point.skipped)]
    dist.broadcast_object_list(choice, src=0)
    if rank == 0:
        return point
    path, skipped = choice[0]
    return ResumePoint(load_folder(fs, path) if path else None, path, skipped)
