"""The small JSON records stages leave for the next stage (train.json, evaluation.json, ...)."""
from __future__ import annotations

import json
from pathlib import Path

from gan_core.files import write_json_atomic as write_record

__all__ = ["read_record", "write_record"]


def read_record(path: Path, stage_hint: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the {stage_hint} stage first")
    return json.loads(path.read_text())
