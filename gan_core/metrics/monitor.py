"""The cheap tier of evaluation: FID (and friends) with a small n every `every` steps during training.

The loop never waits for it: a snapshot of G_ema is copied to the CPU and scored on a background
thread. If the previous snapshot is still being scored, the new one is skipped and counted rather
than queued, so evaluation can fall behind but never holds training back. The gate's full
evaluation happens after training, with the configured n."""
from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from gan_core.images import make_grid
from gan_core.metrics.fid import Fingerprint
from gan_core.state import Callback, TrainState

Sink = Callable[[int, dict, Fingerprint], None]  # step, metrics, fingerprint
GridSink = Callable[[int, np.ndarray], None]  # step, uint8 sample grid (the same latents every time)
GRID = 8  # an 8x8 grid: the classes/codes of a conditional G cycle along the rows


class FIDMonitor(Callback):
    def __init__(self, evaluator, every: int, n: int, seed: int, sink: Sink,
                 on_error: Callable[[int, BaseException], None] | None = None, batch_size: int = 500,
                 grid_sink: GridSink | None = None):
        self.evaluator, self.every, self.n, self.seed = evaluator, every, n, seed
        self.grid_sink = grid_sink
        self.sink, self.on_error, self.batch_size = sink, on_error, batch_size
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fid-monitor")
        self.pending: Future | None = None
        self.last_bucket = 0
        self.scored: list[int] = []
        self.skipped: list[int] = []

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        bucket = state.step // self.every
        if bucket <= self.last_bucket:
            return
        self.last_bucket = bucket
        if self.pending is not None and not self.pending.done():
            self.skipped.append(state.step)
            return
        # the loop keeps updating G_ema; `infer` is what the family exports (G itself, or CycleGAN's translator)
        snapshot = state.family.infer(copy.deepcopy(state.G_ema).cpu().eval())
        self.pending = self.pool.submit(self._score, snapshot, state.step)

    def _score(self, G, step: int) -> None:
        try:
            metrics, fingerprint = self.evaluator.evaluate(G, self.n, self.seed, self.batch_size)
            self.sink(step, metrics, fingerprint)
            if self.grid_sink is not None:  # fixed latents: the grids of one run show G evolving
                images = self.evaluator.samples(G, GRID * GRID, self.seed)
                self.grid_sink(step, make_grid(images, self.evaluator.columns or GRID))
            self.scored.append(step)
        except Exception as e:  # a failed cheap evaluation is reported, never a reason to stop training
            if self.on_error is None:
                raise
            self.on_error(step, e)

    def on_train_end(self, state: TrainState) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pool.shutdown(wait=True)
