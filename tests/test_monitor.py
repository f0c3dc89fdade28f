import threading
import time

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.batches import ShardedBatches
from gan_core.data import load_manifest
from gan_core.metrics.evaluator import load_evaluator
from gan_core.metrics.monitor import FIDMonitor
from gan_core.state import Callback
from gan_core.train import build_state, train


@pytest.fixture
def evaluator(prepared_blobs):
    return load_evaluator(prepared_blobs, load_manifest(prepared_blobs))


def _run(cfg, callbacks):
    images, _ = blobs(64)
    state = build_state(cfg)
    train(state, ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0).from_step(0), cfg, callbacks)
    return state


def test_scores_every_k_steps_into_the_sink(evaluator):
    seen = []
    mon = FIDMonitor(evaluator, every=4, n=32, seed=0, sink=lambda step, m, fp: seen.append((step, m, fp)))
    cfg = tiny_config(train={"steps": 8, "log_every": 2, "checkpoint_every": 8})

    class SlowTraining(Callback):  # steps slower than an evaluation: every snapshot gets scored
        def on_log(self, state, metrics):
            if mon.pending is not None:
                mon.pending.result()

    _run(cfg, [SlowTraining(), mon])
    assert [s for s, _, _ in seen] == [4, 8] and mon.skipped == []
    assert all(m["fid_32"] > 0 and fp.n_fake == 32 for _, m, fp in seen)


class Blocking:
    """An evaluator that holds its first call until released, to prove the loop does not wait."""

    def __init__(self, inner):
        self.inner, self.release, self.calls = inner, threading.Event(), 0

    def evaluate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(30)
        return self.inner.evaluate(*args, **kwargs)


def test_training_never_waits_and_busy_snapshots_are_skipped(evaluator):
    slow = Blocking(evaluator)
    steps = []
    mon = FIDMonitor(slow, every=2, n=32, seed=0, sink=lambda step, m, fp: steps.append(step))
    cfg = tiny_config(train={"steps": 10, "log_every": 2, "checkpoint_every": 10})

    class Release(Callback):  # lets the first evaluation finish only once training is over
        def on_train_end(self, state):
            done.append(time.perf_counter())
            slow.release.set()

    done = []
    state = _run(cfg, [Release(), mon])  # Release ends first, then the monitor waits for its thread
    assert state.step == 10 and done  # the loop reached the end while evaluation 1 was blocked
    assert mon.skipped == [4, 6, 8, 10] and steps == [2]


def test_a_failed_cheap_evaluation_is_reported_not_fatal(evaluator):
    class Broken:
        def evaluate(self, *a, **k):
            raise ValueError("boom")

    errors = []
    mon = FIDMonitor(Broken(), every=2, n=32, seed=0, sink=lambda *a: None, on_error=lambda s, e: errors.append(s))
    _run(tiny_config(train={"steps": 4, "log_every": 2, "checkpoint_every": 4}), [mon])
    assert errors == [2, 4]


def test_sample_grids_use_the_same_latents_at_every_snapshot(evaluator):
    grids = []
    mon = FIDMonitor(evaluator, every=4, n=32, seed=0, sink=lambda *a: None,
                     grid_sink=lambda step, g: grids.append((step, g)))
    cfg = tiny_config(train={"steps": 4, "log_every": 2, "checkpoint_every": 4})
    state = _run(cfg, [mon])
    G = state.G_ema.cpu().eval()
    mon._score(G, 99)
    mon._score(G, 100)  # the same G twice: identical grids, so the grids of a run differ only by training
    (s1, g1), (s2, g2), (s3, g3) = grids
    assert (s1, s2, s3) == (4, 99, 100)
    assert g1.dtype.name == "uint8"
    assert g1.shape == g2.shape and g1.shape[0] == 8 * (8 + 1) * 4 + 4  # 8 rows of 8 px, 1 px pads, x4
    assert (g2 == g3).all()
