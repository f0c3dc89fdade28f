"""How many batches each train step reads, and, for growing families, at which resolution it trains
(the schedule, and what progan and stylegan share to follow it: staged networks, staged reals).

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
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from gan_core.sections import ConfigError


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


def levels(start: int, final: int) -> list[int]:
    """Resolutions start, 2 start, ..., final."""
    return [start * 2 ** i for i in range(int(math.log2(final // start)) + 1)]


@lru_cache(maxsize=32)
def growth_of(options, final: int, base_batch: int) -> Growth:
    """The schedule a family's settings describe (start_resolution, fade_images, stable_images, and
    `batch`: phase_batch parsed); cached, since the loop and every step ask for it."""
    return Growth(options.start_resolution, final, options.fade_images, options.stable_images, base_batch,
                  tuple(sorted(options.batch.items())))


def check_growth(options, cfg, section: str) -> None:
    """The schedule fits the data and ends inside the run: the full resolution trains stable for at
    least one step, so what is evaluated and exported is never caught mid-fade. Errors name
    `<section>.<field>` (family.progan.fade_images)."""
    res, steps = cfg.data.resolution, cfg.train.steps
    if options.start_resolution > res:
        raise ConfigError(f"{section}.start_resolution", f"{options.start_resolution} must be <= data.resolution {res}")
    above = sorted(r for r in options.batch if r > res)
    if above:
        raise ConfigError(f"{section}.phase_batch", f"resolution {above[0]} is above data.resolution {res}")
    g = growth_of(options, res, cfg.train.batch_size)
    if g.growth_steps >= steps:
        raise ConfigError(f"{section}.fade_images",
                          f"growing {options.start_resolution} -> {res} px takes {g.growth_steps} steps "
                          f"(fade_images={options.fade_images}, stable_images={options.stable_images}, "
                          f"phase_batch={options.phase_batch!r}, batch {cfg.train.batch_size}), which must be "
                          f"< train.steps={steps}: lower them or raise train.steps")


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    # nearest: pixel replication, so up(up(x, 2), k) == up(x, 2k) exactly (the fade continuity relies on it)
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def stage_reals(x: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Full-resolution reals (B, C, R, R) brought to what G makes at this stage: pooled to `resolution`,
    while fading blended with the previous resolution's image as G's output is, upsampled back to R."""
    k = x.shape[-1] // resolution
    x_r = downsample(x, k)
    if alpha < 1.0:
        x_r = alpha * x_r + (1.0 - alpha) * upsample(downsample(x, 2 * k), 2)
    return upsample(x_r, k)


class Staged(nn.Module):
    """A network with a growth stage: (resolution, alpha) as plain attributes (no tensors, so no host
    sync per forward) that travel in state_dict as extra state, so checkpoints, G_ema's deepcopy and
    loaded models keep it. Built or loaded: the full-resolution network (alpha 1)."""

    def init_stage(self, start: int, final: int) -> None:
        self.start, self.final = start, final
        self.stage_resolution, self.alpha = final, 1.0

    def set_stage(self, resolution: int, alpha: float) -> None:
        if resolution not in levels(self.start, self.final):
            raise ValueError(f"stage resolution {resolution} not in {levels(self.start, self.final)}")
        if not 0.0 <= alpha <= 1.0 or (alpha < 1.0 and resolution == self.start):
            raise ValueError(f"alpha {alpha} must be in [0, 1], and 1 at the start resolution {self.start}")
        self.stage_resolution, self.alpha = int(resolution), float(alpha)

    def get_extra_state(self) -> dict:
        return {"resolution": self.stage_resolution, "alpha": self.alpha}

    def set_extra_state(self, state: dict) -> None:
        self.set_stage(int(state["resolution"]), float(state["alpha"]))

    @property
    def fading(self) -> bool:
        return self.alpha < 1.0


def enter_stage(ctx, growth: Growth) -> Stage:
    """A growing family's step preparation: the step's stage set on G, D and G_ema (so evaluation sees
    what G trains), recorded in state.extra (checkpointed) and the step's metrics, and the step's
    `multiplier` batches merged into one."""
    state = ctx.state
    stage = growth.at(state.step)
    if len(ctx.batches) != stage.multiplier:
        raise RuntimeError(f"step {state.step} trains at {stage.resolution} px with {stage.multiplier} batches per "
                           f"step, got {len(ctx.batches)} (the loop must read schedule(cfg).batches)")
    for net in (ctx.g_plain, ctx.d_plain, state.G_ema):
        net.set_stage(stage.resolution, stage.alpha)
    state.extra["growth"] = {"resolution": stage.resolution, "alpha": stage.alpha}
    # plain floats: the host knows them; a tensor made from them would be a blocking copy every step
    ctx.out["resolution"], ctx.out["alpha"] = float(stage.resolution), float(stage.alpha)
    merge_batches(ctx)
    return stage


def merge_batches(ctx) -> None:
    """The step's batches as one (a larger batch for this step), images only: these families are unconditional."""
    if len(ctx.batches) > 1:
        ctx.batches = [{"images": torch.cat([b["images"] for b in ctx.batches])}]
