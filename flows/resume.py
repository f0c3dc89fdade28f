"""Where a restarted or re-triggered training run continues from: the newest checkpoint in the
run's storage that verifies (hash sidecar, weights-only load). Ray hands back its latest reported
checkpoint; if that one is torn or corrupt, older ones are tried, newest first, and each one
skipped is named. Every rank makes the same choice from the same listing."""
from __future__ import annotations

import posixpath
from pathlib import Path

from gan_core.checkpoint import CheckpointError, load_checkpoint

CKPT_NAME = "checkpoint.pt"


class NoValidCheckpoint(RuntimeError):
    pass


def _older_siblings(checkpoint) -> list:
    """Checkpoint folders of the same run older than `checkpoint`, newest first. Ray names them
    checkpoint_<timestamp>, so name order is time order."""
    import pyarrow.fs
    import ray.train

    fs, here = checkpoint.filesystem, checkpoint.path.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(posixpath.dirname(here)))
    older = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and posixpath.basename(i.path).startswith("checkpoint_") and i.path < here), reverse=True)
    return [ray.train.Checkpoint(p, filesystem=fs) for p in older]


def load_resume_point(checkpoint) -> tuple[dict, list[str]]:
    """(checkpoint dict, what was skipped and why) for the newest valid checkpoint."""
    skipped: list[str] = []
    for candidate in [checkpoint, *_older_siblings(checkpoint)]:
        try:
            with candidate.as_directory() as d:
                return load_checkpoint(Path(d) / CKPT_NAME), skipped
        except (CheckpointError, OSError) as e:
            skipped.append(f"{posixpath.basename(candidate.path.rstrip('/'))}: {e}")
    raise NoValidCheckpoint("no valid checkpoint to resume from; skipped " + "; ".join(skipped))
