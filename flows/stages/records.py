"""The small JSON records stages leave for the next stage (train.json, evaluation.json, ...), and the
stage timings a pipeline run records (its orchestration breakdown: MLflow metrics timing/<part>_s)."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from gan_core.files import write_json_atomic as write_record

__all__ = ["read_record", "write_record", "timed", "timings", "reset_timings"]

# one run at a time per process (the workspace lock serialises runs); a lock because Prefect may
# run a task in another thread of the same process
_TIMINGS: dict[str, float] = {}
_LOCK = threading.Lock()


def read_record(path: Path, stage_hint: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the {stage_hint} stage first")
    return json.loads(path.read_text())


@contextmanager
def timed(part: str):
    """Adds the block's wall seconds to `part` (summed: DVC commits and pushes happen in every stage)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        with _LOCK:
            _TIMINGS[part] = _TIMINGS.get(part, 0.0) + time.perf_counter() - t0


def timings() -> dict[str, float]:
    with _LOCK:
        return dict(_TIMINGS)


def reset_timings() -> None:
    with _LOCK:
        _TIMINGS.clear()
