"""The divergence verdict of a training run: a small file next to its checkpoints.

A run that diverges ends normally on every rank (so Ray's FailureConfig does not restart a run that
would only diverge again); the reason travels to the driver in this file, because Ray's result
carries checkpoint metrics only. Works on the run's storage, a folder or a bucket (pyarrow fs)."""
from __future__ import annotations

import json

VERDICT = "diverged.json"


class Verdict:
    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    @classmethod
    def of_run(cls, fs, run_path: str) -> "Verdict":
        return cls(fs, f"{run_path.rstrip('/')}/{VERDICT}")

    def write(self, step: int, reason: str) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps({"step": step, "reason": reason}).encode())

    def read(self) -> str | None:
        import pyarrow.fs

        if self.fs.get_file_info(self.path).type != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_stream(self.path) as f:
            return json.loads(f.read())["reason"]

    def delete(self) -> None:
        import pyarrow.fs

        if self.fs.get_file_info(self.path).type == pyarrow.fs.FileType.File:
            self.fs.delete_file(self.path)


def divergence_verdict(storage_path: str, storage_fs, run_name: str) -> Verdict:
    import pyarrow.fs

    return Verdict.of_run(storage_fs or pyarrow.fs.LocalFileSystem(), f"{storage_path.rstrip('/')}/{run_name}")
