"""Checks the families' Options dataclasses share: each raises ConfigError naming `family.<field>`
(gan_core.config adds the family's name: `family.wgan_gp.gp_lambda`)."""
from __future__ import annotations

import math

from gan_core.sections import ConfigError


def number(name: str, v, low: float = 0.0, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> None:
    """A finite number between low and high (no upper bound when high is None; an open end excludes
    its bound); bools are refused."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    ok = ok and (v > low if low_open else v >= low)
    ok = ok and (high is None or (v < high if high_open else v <= high))
    if not ok:
        if high is None:
            bound = f"{'>' if low_open else '>='} {low}"
        else:
            bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"family.{name}", f"must be a finite number {bound}, got {v!r}")


def integer(name: str, v, low: int = 0, note: str = "") -> None:
    """An int >= low (bools refused); `note` says what a special value below the usual floor means."""
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"family.{name}", f"must be an integer >= {low}{note}, got {v!r}")


def choice(name: str, v, allowed: tuple) -> None:
    if isinstance(v, bool) or v not in allowed:
        raise ConfigError(f"family.{name}", f"must be one of {allowed}, got {v!r}")
