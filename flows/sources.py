"""Dataset sources for prepare: raw images (uint8, NHW or NHWC) and optional labels.

Built-in here: `sklearn-digits`, the 1797 8x8 handwritten digits bundled with scikit-learn (works
offline). More sources (folders, archives, S3, IDX, downloads) plug into SOURCES.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from gan_core.config import ConfigError

RawData = tuple[np.ndarray, "np.ndarray | None"]


def sklearn_digits() -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255
    return images, d.target.astype(np.int64)


SOURCES: dict[str, Callable[[], RawData]] = {"sklearn-digits": sklearn_digits}


def read_source(source: str) -> RawData:
    if source not in SOURCES:
        raise ConfigError("data.source", f"unknown source {source!r} (known: {', '.join(sorted(SOURCES))})")
    return SOURCES[source]()
