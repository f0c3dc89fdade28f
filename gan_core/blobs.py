"""Objects as bytes: torch.save into memory, for files whose hash must depend on content alone.

Apart from gan_core.checkpoint so the metrics (the evaluator's saved backbone) write the same
bytes without importing the checkpoint format and the training stack behind it.
"""
from __future__ import annotations

import io
from typing import Any

import torch


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: through a buffer the archive carries no file name, so equal
    content gives equal bytes (and equal DVC hashes)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
