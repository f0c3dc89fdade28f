import math

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.config import ConfigError
from gan_core.batches import ShardedBatches
from gan_core.steps import unwrap
from gan_core.state import Callback
from gan_core.train import DivergedError, build_state, ema_update, train


def _batch(n=8):
    images, labels = blobs(n)
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}


@pytest.mark.parametrize("loss", ["nonsat", "hinge"])
def test_one_step_changes_g_and_d_and_stays_finite(loss):
    cfg = tiny_config(model={"loss": loss})
    s = build_state(cfg)
    g0 = [p.detach().clone() for p in s.G.parameters()]
    d0 = [p.detach().clone() for p in s.D.parameters()]
    out = s.family.step(s, [_batch()], cfg.train)
    assert set(out) == {"loss_d", "loss_g"} and all(math.isfinite(float(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, s.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, s.D.parameters()))
    assert all(p.requires_grad for p in s.D.parameters())  # D unfrozen again after the G update


def test_unsupported_loss_is_refused():
    with pytest.raises(ConfigError, match="model.loss"):
        build_state(tiny_config(model={"loss": "wasserstein"}))


def test_ema_update_is_the_convex_combination():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, expected)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


class Record(Callback):
    def __init__(self):
        self.logs, self.ckpts, self.ended = [], [], False

    def on_log(self, state, metrics):
        self.logs.append((state.step, metrics))

    def on_checkpoint(self, state):
        self.ckpts.append(state.step)

    def on_train_end(self, state):
        self.ended = True


def test_loop_reports_through_callbacks_and_stops_at_steps():
    cfg = tiny_config(train={"steps": 5, "log_every": 2, "checkpoint_every": 3})
    s = build_state(cfg)
    images, labels = blobs(64)
    batches = ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0)
    rec = Record()
    train(s, batches.from_step(0), cfg, [rec])
    assert s.step == 5 and s.images_seen == 40
    assert [st for st, _ in rec.logs] == [2, 4, 5] and rec.ckpts == [3, 5] and rec.ended
    assert all(m["images_per_s"] > 0 for _, m in rec.logs)


def test_non_finite_loss_stops_training_as_diverged_at_that_step():
    """Checked before every checkpoint (here every step), so the poisoned step is never checkpointed."""
    cfg = tiny_config(train={"steps": 10, "log_every": 5, "checkpoint_every": 1})

    class PoisonAt3(Callback):
        def __init__(self):
            self.ckpts = []

        def on_step(self, state):
            if state.step == 3:
                with torch.no_grad():
                    next(unwrap(state.D).parameters()).fill_(float("nan"))

        def on_checkpoint(self, state):
            self.ckpts.append(state.step)

    s, cb = build_state(cfg), PoisonAt3()
    images, _ = blobs(64)
    with pytest.raises(DivergedError, match=r"diverged at or before step 4 \(first non-finite: loss_d.* at step 4\)"):
        train(s, ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0).from_step(0), cfg, [cb])
    assert s.step == 4 and cb.ckpts == [1, 2, 3]  # nothing after the poisoning


def test_divergence_between_checks_is_caught_at_the_next_check_naming_the_first_bad_step():
    """The check reads the device only at log/checkpoint steps: a NaN at step 7 stops the run at step 8
    (checkpoint_every 4), before that checkpoint, and the error names step 7 and its keys."""
    cfg = tiny_config(train={"steps": 12, "log_every": 6, "checkpoint_every": 4})
    seen = []

    class PoisonAt6(Callback):
        def on_step(self, state):
            if state.step == 6:
                with torch.no_grad():
                    next(unwrap(state.D).parameters()).fill_(float("nan"))

        def on_log(self, state, metrics):
            seen.append(("log", state.step))

        def on_checkpoint(self, state):
            seen.append(("ckpt", state.step))

    s = build_state(cfg)
    images, _ = blobs(64)
    bad = r"diverged at or before step 8 \(first non-finite: loss_d, loss_g at step 7\)"
    with pytest.raises(DivergedError, match=bad):
        train(s, ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0).from_step(0), cfg, [PoisonAt6()])
    assert s.step == 8 and seen == [("ckpt", 4), ("log", 6)]
