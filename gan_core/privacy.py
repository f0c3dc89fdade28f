"""DP-SGD on the discriminator with Opacus: per-sample gradient clipping and Gaussian noise on D's
updates, a privacy accountant, and a budget that calibrates the noise or ends training when spent.

Entry points (the federated clients call the same two):

    private_d(D, cfg) -> nn.Module              at build time: batch norm -> group norm, refusals
    make_private(state, cfg, n_train) -> dict    after build/restore: hooks on D, DP optimizer, accountant

Only D reads the private images; G learns from D's outputs alone, so G is post-processing and its
updates need no noise. `state.D` stays the plain module (checkpoints, export and `unwrap` see the
same keys as without privacy): Opacus' GradSampleModule only adds hooks to D's layers, and they are
switched off while D is frozen (G's phase), so G's backward through D leaves no per-sample
gradients behind and D's next update sees only its own.

Under DDP (train.num_workers > 1) D is not wrapped in DistributedDataParallel: each rank clips its
own per-sample gradients, rank 0 alone adds the noise (std sigma * max_grad_norm, as one process
would for the global batch), and Opacus' DistributedDPOptimizer sums the ranks' gradients and
divides by the global batch. The ranks then take the same step, so D stays one replica (the replica
check at checkpoints verifies it) and the accountant's q is the global batch over n_train.

What the accountant assumes: Poisson sampling at rate q = batch / n_train. The project's sampler
draws fixed-size batches from a shuffled epoch (as most DP-SGD code does); the reported epsilon is
the accountant's figure for Poisson sampling at that rate, not a proof for shuffled batches.

The accountant's history travels in `state.extra["privacy"]` (checkpointed), so a resumed run
continues epsilon exactly where the checkpoint left it. Imports opacus only here, lazily.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from gan_core.sections import ConfigError

if TYPE_CHECKING:
    from gan_core.config import PipelineConfig
    from gan_core.sections import PrivacyConfig
    from gan_core.state import TrainState

KEY = "privacy"  # state.extra key; the registry's tags read the same figures from the checkpoint


class PrivacyError(RuntimeError):
    """A D update would have escaped DP-SGD (no per-sample gradients): refuse rather than leak."""


# ---- build time ------------------------------------------------------------------------------
def private_d(D: nn.Module, cfg: "PipelineConfig") -> nn.Module:
    """D with layers per-sample gradients suit: Opacus' ModuleValidator.fix swaps batch norm (which
    mixes the samples of a batch) for group norm, in-place activations become out-of-place; anything
    it cannot fix is refused by name."""
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(D)
    for m in fixed.modules():  # an in-place activation would overwrite the output the per-sample hooks keep
        if getattr(m, "inplace", False):
            m.inplace = False
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError("privacy.enabled", f"{cfg.model.arch}'s discriminator has layers DP-SGD cannot handle "
                                             f"even after replacing batch norm: {'; '.join(map(str, errors))[:400]}")
    return fixed


def delta_of(p: "PrivacyConfig", n_train: int) -> float:
    # 0: a tenth of one training image's share. delta must stay well below 1/n: a mechanism that
    # publishes one random training image outright is (0, 1/n)-DP
    return p.delta if p.delta > 0 else 0.1 / n_train


def accountant_for(name: str, history=()):
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=name)
    acc.history = [tuple(h) for h in history]
    return acc


def epsilon(history, delta: float, accountant: str) -> float:
    """The accountant's epsilon for a history of (noise_multiplier, sample_rate, steps); 0 before any step."""
    if not history:
        return 0.0
    return float(accountant_for(accountant, history).get_epsilon(delta=delta))


def noise_for(p: "PrivacyConfig", sample_rate: float, d_steps: int, delta: float) -> float:
    """sigma: as given, else the smallest that keeps `d_steps` updates within the target epsilon."""
    if p.noise_multiplier > 0:
        return p.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=p.target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=d_steps, accountant=p.accountant))


def steps_allowed(p: "PrivacyConfig", sigma: float, sample_rate: float, delta: float, d_steps: int) -> int:
    """The most D updates (<= d_steps) whose epsilon stays within the target: binary search on the
    accountant's own figure (epsilon grows with the step count)."""
    if p.target_epsilon <= 0 or not p.stop_when_spent:
        return d_steps
    fits = lambda k: epsilon([(sigma, sample_rate, k)], delta, p.accountant) <= p.target_epsilon  # noqa: E731
    if fits(d_steps):
        return d_steps
    lo, hi = 0, d_steps  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---- after build / restore ------------------------------------------------------------------------
def make_private(state: "TrainState", cfg: "PipelineConfig", n_train: int) -> dict:
    """Hook D, swap opt_d for Opacus' DPOptimizer and attach the accountant. Call after any restore
    (the accountant continues the checkpoint's history). Returns state.extra["privacy"], the record
    the checkpoint, the log lines and the registry's tags read."""
    from opacus import GradSampleModule

    p, t = cfg.privacy, cfg.train
    if n_train < t.batch_size:
        raise ConfigError("train.batch_size", f"{t.batch_size} is more than the {n_train} training images")
    q, delta, d_steps = t.batch_size / n_train, delta_of(p, n_train), t.steps * t.n_critic
    rec = state.extra.get(KEY) or {}
    sigma = float(rec["noise_multiplier"]) if rec else noise_for(p, q, d_steps, delta)
    allowed = steps_allowed(p, sigma, q, delta, d_steps)
    if allowed < t.n_critic:
        raise ConfigError("privacy.target_epsilon", f"{p.target_epsilon:g} is spent before the first step "
                                                    f"(noise_multiplier={sigma:g}, sample rate {q:.3g}, delta {delta:.3g})")
    rec = {"noise_multiplier": sigma, "max_grad_norm": p.max_grad_norm, "sample_rate": q, "delta": delta,
           "accountant": p.accountant, "target_epsilon": p.target_epsilon, "history": rec.get("history", []),
           "steps": int(rec.get("steps", 0)), "epsilon": float(rec.get("epsilon", 0.0)),
           "stop_at": allowed // t.n_critic, "stopped_at": rec.get("stopped_at")}
    state.extra[KEY] = rec
    gsm = GradSampleModule(state.D, loss_reduction="mean")
    # G's phase freezes D (requires_grad off): per-sample hooks off with it, so G's backward through
    # D computes no per-sample gradients that D's next update would pick up
    state.D.register_forward_pre_hook(lambda m, _: setattr(gsm, "hooks_enabled", _trainable(m)))
    # epsilon is refreshed at the steps the loop logs or checkpoints (and where training ends): the PRV
    # accountant takes ~0.1 s a call, too slow for every update; the history itself is always exact
    due = lambda step: step % t.log_every == 0 or step % t.checkpoint_every == 0 or step >= rec["stop_at"]  # noqa: E731
    state.opt_d = _optimizer(state, rec, t.per_worker_batch, t.steps, t.n_critic, due)
    return rec


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def _optimizer(state: "TrainState", rec: dict, batch: int, total_steps: int, per_step: int, due):
    """`batch`: this rank's batch; under DDP the ranks' clipped sums are added (noise from rank 0 only)."""
    from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

    class Guarded(DistributedDPOptimizer if distributed() else DPOptimizer):
        def pre_step(self, closure=None):
            missing = [p for p in self.params if p.grad is not None and p.grad_sample is None]
            if missing:  # Opacus would step on the plain gradient: a silent, unaccounted leak
                raise PrivacyError(f"D update at step {state.step} has no per-sample gradients for "
                                   f"{len(missing)} parameters (D in eval mode or hooks off?)")
            return super().pre_step(closure)

    opt = Guarded(state.opt_d, noise_multiplier=rec["noise_multiplier"], max_grad_norm=rec["max_grad_norm"],
                  expected_batch_size=batch, loss_reduction="mean")
    opt.attach_step_hook(lambda _: _account(rec, total_steps, per_step, due))
    return opt


def _account(rec: dict, total_steps: int, per_step: int, due) -> None:
    """One noised D update: extend the history (merged runs of equal sigma and q) and epsilon."""
    sigma, q = rec["noise_multiplier"], rec["sample_rate"]
    hist = rec["history"]
    if hist and hist[-1][0] == sigma and hist[-1][1] == q:
        hist[-1] = [sigma, q, hist[-1][2] + 1]
    else:
        hist.append([sigma, q, 1])
    rec["steps"] += 1
    step, done = divmod(rec["steps"], per_step)
    if done == 0 and due(step):
        rec["epsilon"] = epsilon(hist, rec["delta"], rec["accountant"])
    # the last D update of step stop_at (per_step = n_critic updates a step) ends a spent budget
    if rec["stop_at"] < total_steps and rec["steps"] >= rec["stop_at"] * per_step and rec["stopped_at"] is None:
        rec["stopped_at"] = rec["stop_at"]
        print(f"privacy: budget epsilon={rec['target_epsilon']:g} (delta={rec['delta']:.3g}) reached at step "
              f"{rec['stop_at']} of {total_steps}: epsilon={rec['epsilon']:.4g}; training stops there", flush=True)


def end_step(state: "TrainState", steps: int) -> int:
    """The step training ends at: train.steps, or earlier where the privacy budget is spent."""
    rec = state.extra.get(KEY)
    return min(steps, rec["stop_at"]) if rec else steps


TAGS = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "accountant")


def summary(rec: dict) -> dict[str, str]:
    """The privacy.* tags of a registered version (strings, as MLflow stores them; floats in repr, so
    they read back exactly). Epsilon is recomputed from the history: exact whatever step it was cached at."""
    figures = {**rec, "epsilon": epsilon(rec["history"], rec["delta"], rec["accountant"])}
    return {f"privacy.{k}": repr(figures[k]) if isinstance(figures[k], float) else str(figures[k]) for k in TAGS}
