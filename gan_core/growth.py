"""How many batches each train step reads, and, for growing families, at which resolution it trains.

Every family's loop reads `batches(step)` batches per step from the sampler, and a resumed run
starts the sampler at `position(step)`. A fixed schedule reads n_critic batches per step (one per
critic update). Progressive growing (Karras et al. 2018) trains at start_resolution, then for every
doubling fades the new layers in (alpha 0 -> 1) and trains them stable, until data.resolution, which
then lasts for the rest of the run. Stages are measured in images shown, as in the paper, and each
stage may use a larger batch than train.batch_size (lower resolutions are cheap): a step then reads
`multiplier` batches, which the family's step concatenates.

Everything here is a pure function of the step, so a run killed mid-fade and resumed recomputes the
same resolution, alpha and sampler position bit for bit; the checkpoint records them as well, for
readers and as a check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gan_core.config import ConfigError


@dataclass(frozen=True)
class Stage:
    resolution: int  # the resolution G and D train at during this step
    alpha: float  # weight of the newest layers: 1 when stable, k / n at step k of an n-step fade
    multiplier: int  # batches of train.batch_size this step reads

    @property
    def fading(self) -> bool:
        return self.alpha < 1.0


@dataclass(frozen=True)
class Fixed:
    """n batches every step: one per critic update."""
    n: int = 1

    def batches(self, step: int) -> int:
        return self.n

    def position(self, step: int) -> int:
        return step * self.n

    def at(self, step: int) -> None:
        return None


@dataclass(frozen=True)
class Segment:
    resolution: int
    fade: bool
    steps: int | None  # None: the last, open-ended stage at full resolution
    multiplier: int


def parse_phase_batch(text: str, field: str) -> dict[int, int]:
    """'4:4,8:2' -> {4: 4, 8: 2}: resolution -> multiplier of train.batch_size for its stages."""
    out: dict[int, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        res, sep, mult = item.partition(":")
        if not sep or not res.strip().isdigit() or not mult.strip().isdigit():
            raise ConfigError(field, f"entry {item!r} must be RESOLUTION:MULTIPLIER (whole numbers), as in '4:4,8:2'")
        r, m = int(res), int(mult)
        if r < 4 or r & (r - 1):
            raise ConfigError(field, f"resolution {r} in {item!r} must be a power of two >= 4")
        if m < 1:
            raise ConfigError(field, f"multiplier {m} in {item!r} must be >= 1")
        if r in out:
            raise ConfigError(field, f"resolution {r} is listed twice")
        out[r] = m
    return out


@dataclass(frozen=True)
class Growth:
    start: int  # first resolution (a power of two)
    final: int  # data.resolution
    fade_images: int  # images shown while a new resolution fades in
    stable_images: int  # images shown at each resolution once faded in (before the final one)
    base_batch: int  # train.batch_size: the global batch of one multiplier
    batch: tuple[tuple[int, int], ...] = ()  # (resolution, multiplier) pairs; others use 1

    def __post_init__(self):
        if self.start > self.final:
            raise ValueError(f"growth starts at {self.start} px, above the final {self.final} px")

    def multiplier(self, resolution: int) -> int:
        return dict(self.batch).get(resolution, 1)

    def segments(self) -> list[Segment]:
        res, out = self.start, []
        while True:
            m = self.multiplier(res)
            if res == self.final:
                if res != self.start:
                    out.append(Segment(res, True, self._steps(self.fade_images, m), m))
                out.append(Segment(res, False, None, m))
                return out
            if res != self.start:
                out.append(Segment(res, True, self._steps(self.fade_images, m), m))
            out.append(Segment(res, False, self._steps(self.stable_images, m), m))
            res *= 2

    def _steps(self, images: int, multiplier: int) -> int:
        return max(1, math.ceil(images / (self.base_batch * multiplier)))

    @property
    def growth_steps(self) -> int:
        """Steps before the final resolution trains stable (alpha 1)."""
        return sum(s.steps for s in self.segments() if s.steps is not None)

    def at(self, step: int) -> Stage:
        first = 0
        for s in self.segments():
            if s.steps is None or step < first + s.steps:
                alpha = (step - first) / s.steps if s.fade else 1.0
                return Stage(s.resolution, alpha, s.multiplier)
            first += s.steps
        raise AssertionError("unreachable: the last segment is open-ended")

    def batches(self, step: int) -> int:
        return self.at(step).multiplier

    def position(self, step: int) -> int:
        """Batches read before `step`."""
        first, pos = 0, 0
        for s in self.segments():
            n = step - first if s.steps is None else min(s.steps, max(0, step - first))
            pos += n * s.multiplier
            if s.steps is None or step < first + s.steps:
                return pos
            first += s.steps
        return pos
