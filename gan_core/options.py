"""Checks the families' Options dataclasses share: each raises ConfigError naming `family.<field>`
(gan_core.config adds the family's name: `family.wgan_gp.gp_lambda`)."""
from __future__ import annotations

import math

from gan_core.config import ConfigError


def number(name: str, v, low: float = 0.0, high: float | None = None) -> None:
    """A finite number in [low, high] (no upper bound when high is None); bools are refused."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= low
    if not ok or (high is not None and v > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"family.{name}", f"must be a finite number {bound}, got {v!r}")


def integer(name: str, v, low: int = 0) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"family.{name}", f"must be an integer >= {low}, got {v!r}")
