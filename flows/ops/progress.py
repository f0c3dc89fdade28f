"""Training progress from rank 0 to the driver's console, beside Ray Train rather than through it.

`ray.train.report` blocks (~0.1-2 s, see ENVIRONMENT.md) and is for checkpoints; progress instead goes
to a tiny actor the driver creates (`ProgressBoard`, no CPU reserved) and hands to the workers in
train_loop_config. Rank 0's `ProgressFeed` callback posts to it fire-and-forget (`.remote()` without
`ray.get`: the step loop never waits, and never syncs the device: it reuses the averaged metrics the
loop already computed for its log steps) at most every SEND_S; a driver thread (`BoardReader`) drains
the board and renders. Lost reports only make the bar skip: nothing here can fail a run.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from gan_core.state import Callback, TrainState

SEND_S = 0.5  # rank 0 posts at most this often (and always its last step)
POLL_S = 0.25  # the driver drains the board this often
KEEP = 64  # the board keeps the newest reports only: a stalled reader never grows it


class _Board:
    def __init__(self):
        self.items: list[dict] = []

    def push(self, item: dict) -> None:
        self.items.append(item)
        del self.items[:-KEEP]

    def drain(self) -> list[dict]:
        out, self.items = self.items, []
        return out


def create_board():
    """The board actor (call on the driver, after ray.init). num_cpus=0: it never competes with the
    training workers for the CPUs they reserve."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(_Board).remote()


class ProgressFeed(Callback):
    """Rank 0's side: posts {step, total, rates, losses} on log steps, throttled, and each monitor score
    as it arrives (from the monitor's thread, via `monitor`)."""

    def __init__(self, post: Callable[[dict], object], total: int, clock: Callable[[], float] = time.monotonic):
        self.post, self.total, self.clock = post, total, clock  # post: the board's `push.remote`
        self.sent_at: float | None = None
        self.sent_step = 0

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        now, last = self.clock(), state.step >= self.total
        if self.sent_at is not None and now - self.sent_at < SEND_S and not last:
            return
        rate = (state.step - self.sent_step) / (now - self.sent_at) if self.sent_at is not None and now > self.sent_at else 0.0
        self.sent_at, self.sent_step = now, state.step
        self._post({"step": state.step, "total": self.total, "images_per_s": metrics.get("images_per_s", 0.0),
                    "steps_per_s": rate, "metrics": {k: v for k, v in metrics.items() if k != "images_per_s"}})

    def monitor(self, step: int, metrics: dict[str, float]) -> None:
        self._post({"step": step, "monitor": dict(metrics)})

    def _post(self, item: dict) -> None:
        try:
            self.post(item)  # push.remote without ray.get: fire and forget
        except Exception:  # the board is gone (driver ended): progress is not worth a failed step
            pass


def tee_monitor(monitor, feed: ProgressFeed) -> None:
    """Make a FIDMonitor's scores reach the feed as well as its own sink (MLflow)."""
    inner = monitor.sink

    def sink(step, metrics, fingerprint):
        inner(step, metrics, fingerprint)
        feed.monitor(step, metrics)

    monitor.sink = sink


class BoardReader:
    """The driver's side: a daemon thread handing each drained report to `render` until stopped;
    `stop` drains once more, so the last step is rendered."""

    def __init__(self, board, render: Callable[[dict], None]):
        self.board, self.render = board, render
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ganpipe-progress", daemon=True)

    def __enter__(self) -> "BoardReader":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self._drain()

    def _loop(self) -> None:
        while not self.done.wait(POLL_S):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            items = ray.get(self.board.drain.remote(), timeout=5)
        except Exception:  # the cluster is going away: training reports its own failure
            return
        for item in items:
            self.render(item)
