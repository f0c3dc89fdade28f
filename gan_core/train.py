"""Training state and loop. Reports through callbacks, which is how MLflow and Ray get in
without gan_core importing them."""
from __future__ import annotations

import copy
import time
import warnings
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gan_core.config import ConfigError, PipelineConfig, TrainConfig
from gan_core.divergence import DivergedError, Divergence  # noqa: F401 (DivergedError: raised from here)
from gan_core.growth import Fixed, Growth
from gan_core.losses import LOSSES
from gan_core.models import family_for
from gan_core.privacy import KEY as PRIVACY_KEY, end_step
from gan_core.state import Callback, TrainState
from gan_core.steps import unwrap


def build_state(cfg: PipelineConfig, device: torch.device | str = "cpu", n_classes: int = 0) -> TrainState:
    """Fresh networks and optimizers for cfg, on device, unwrapped (see `distribute`).
    `n_classes` is the dataset's class count; conditional families need it, others ignore it."""
    family = family_for(cfg.model)
    if family.conditional and n_classes < 2:
        raise ConfigError("model.arch", f"{family.name} is class-conditional and needs a labelled dataset with at "
                                        f"least 2 classes; dataset {cfg.data.name!r} has {n_classes}")
    n_classes = n_classes if family.conditional else 0
    device = torch.device(device)
    G = family.build_g(cfg.model, cfg.data, n_classes, cfg.family).to(device)
    D = family.build_d(cfg.model, cfg.data, n_classes, cfg.family).to(device)
    if cfg.model.ssl == "rotation":  # the head is part of D: optimised, all-reduced and checkpointed with it
        from gan_core.ssl import attach
        attach(D, cfg.data.channels, cfg.data.resolution, n_classes, cfg.model.ssl_weight_d, cfg.model.ssl_weight_g)
    if cfg.privacy.enabled:  # group norm for batch norm: DP-SGD needs per-sample gradients (privacy.make_private)
        from gan_core.privacy import private_d
        D = private_d(D, cfg)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    t = cfg.train
    return TrainState(family, G, D, G_ema, optimizer(G, t, t.lr_g), optimizer(D, t, t.lr_d),
                      LOSSES[cfg.model.loss], device, n_classes=n_classes, bf16=t.bf16, channels_last=t.channels_last,
                      options=cfg.family)


def optimizer(model: nn.Module, t: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if t.optimizer == "rmsprop":  # WGAN: momentum-free, which the paper found stable with clipping
        return torch.optim.RMSprop(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(t.beta1, t.beta2))


def schedule(cfg: PipelineConfig) -> Fixed | Growth:
    """How many batches each step reads: the family's schedule (progressive growing), else n_critic."""
    family = family_for(cfg.model)
    return family.schedule(cfg) if family.schedule is not None else Fixed(cfg.train.n_critic)


def batch_position(step: int, cfg: PipelineConfig) -> int:
    """Index of the first batch of `step` in the sampler's sequence."""
    return schedule(cfg).position(step)


def distribute(state: TrainState, world: int) -> TrainState:
    """Wrap G and D in DDP (the process group must exist). Buffers are not broadcast: batch-norm
    statistics stay per worker, which also avoids DDP rewriting buffers between D's two forwards."""
    ids = [state.device.index] if state.device.type == "cuda" else None
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers but tells rank-local-buffer users to keep it
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        # a growing family leaves the layers of resolutions it has not reached without gradients,
        # which DDP must be told to expect (it then checks every backward for unused parameters)
        unused = state.family.grows(state.options)
        state.G = DDP(state.G, device_ids=ids, broadcast_buffers=False, find_unused_parameters=unused)
        if PRIVACY_KEY not in state.extra:  # DP-SGD's optimizer reduces D's clipped, noised gradients itself
            state.D = DDP(state.D, device_ids=ids, broadcast_buffers=False, find_unused_parameters=unused)
    state.world = world
    return state


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, in one fused call per kind of tensor (one kernel per
    group instead of one per tensor on a GPU; on the CPU the same per-tensor lerp as before, bit for
    bit); buffers (BN running stats) are copied as they are."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(model.buffers()))


def mean_metrics(sums: dict, counts: dict[str, int]) -> dict[str, float]:
    """The log window's averages as floats: one read from the device for all of them."""
    keys = [k for k, v in sums.items() if torch.is_tensor(v)]
    values = dict(zip(keys, torch.stack([sums[k].float() for k in keys]).tolist())) if keys else {}
    return {k: (values[k] if k in values else float(v)) / counts[k] for k, v in sums.items()}


def train(state: TrainState, batches: Iterator, cfg: PipelineConfig,
          callbacks: Iterable[Callback] = ()) -> TrainState:
    """Run steps until cfg.train.steps, starting at state.step (so a restored state resumes).
    `batches` must start at batch_position(state.step); each step takes schedule(cfg).batches(step).

    Between log and checkpoint steps nothing waits for the device: losses are summed and checked for
    NaN/Inf there (gan_core.divergence), and read only at log steps, checkpoint steps and the last
    step, where the divergence check runs first (a diverged state is never logged as if it were fine,
    nor checkpointed)."""
    t, callbacks, plan = cfg.train, list(callbacks), schedule(cfg)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # steps that reported each key: a lazy term (R1 every 16) is averaged
    # over the steps it ran, not diluted by the steps between
    n, imgs, t0, paused = 0, 0, time.perf_counter(), 0.0
    divergence, checked = Divergence(state.device, state.world), state.step
    batches = iter(batches)
    for batch in batches:
        if state.step >= end_step(state, t.steps):  # train.steps, or where a DP budget ran out
            break
        group = [batch] + [next(batches) for _ in range(plan.batches(state.step) - 1)]
        # ---- one optimisation step (family-specific) --------------------------------------
        out = state.family.step(state, group, t)
        state.step += 1
        divergence.record(state.step, out)
        batch_images = sum(b["images"].shape[0] for b in group) * state.world
        state.images_seen += batch_images
        decay = t.ema_decay if state.step > t.ema_start else 0.0
        ema_update(state.G_ema, unwrap(state.G), decay)
        # ---- metrics, averaged over the log window -----------------------------------------
        for k, v in out.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        n, imgs = n + 1, imgs + batch_images
        last = state.step == end_step(state, t.steps)
        log, save = state.step % t.log_every == 0 or last, state.step % t.checkpoint_every == 0 or last
        if log or save:
            divergence.check(state.step)  # a collective: every rank reaches it at the same steps
            checked = state.step
        if log:
            if state.device.type == "cuda":
                torch.cuda.synchronize(state.device)
            elapsed = time.perf_counter() - t0 - paused  # checkpoint time is not throughput
            metrics = mean_metrics(sums, counts)
            metrics["images_per_s"] = imgs / elapsed if elapsed > 0 else 0.0
            if PRIVACY_KEY in state.extra:  # spent so far (refreshed at log steps): a curve in MLflow, not only a tag
                metrics["epsilon"] = state.extra[PRIVACY_KEY]["epsilon"]
            for cb in callbacks:
                cb.on_log(state, metrics)
            sums, counts, n, imgs, t0, paused = {}, {}, 0, 0, time.perf_counter(), 0.0
        # ---- checkpoints -------------------------------------------------------------------
        if save:
            tc = time.perf_counter()
            for cb in callbacks:
                cb.on_checkpoint(state)
            paused += time.perf_counter() - tc
        for cb in callbacks:  # last: whatever a callback does here lands in no earlier checkpoint
            cb.on_step(state)
    if state.step != checked:  # the batches ran out before the last step: still no silent divergence
        divergence.check(state.step)
    for cb in callbacks:
        cb.on_train_end(state)
    return state
