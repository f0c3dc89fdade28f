"""A train step made of phases, in the spirit of stylegan2-ada's loss phases (Dmain, Dreg, Gmain, ...).

A family composes its step from phases, each updating one network (D or G) on a main loss plus
regularisation terms with their own intervals, instead of branching inside one shared function:

    Step(prepare, (Phase("D", d_loss, terms=(gp,), per_batch=True), Phase("G", g_loss, terms=(info,))))

The runner owns what every phase shares: autocast, zero_grad / backward / optimizer step, freezing D
while G learns (G's phase reads D's plain module, so DDP neither computes nor all-reduces gradients
that would be thrown away), lazy regularisation and the detached metrics the loop logs. Phases talk
to each other through `Ctx.v` (the fake batch drawn in D's phase is reused by G's: G has not changed
since it was drawn, so this is correct and saves a G forward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from gan_core.sections import TrainConfig
    from gan_core.state import TrainState


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def set_requires_grad(model: nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


@dataclass
class Ctx:
    """What the phases of one step share."""
    state: "TrainState"
    cfg: "TrainConfig"
    batches: list[dict]
    index: int = 0  # the batch a per-batch phase is on
    v: dict = field(default_factory=dict)  # tensors phases hand on (real, latents, fake, logits)
    out: dict = field(default_factory=dict)  # detached 0-d metrics the step returns

    @property
    def batch(self) -> dict:
        return self.batches[self.index]

    @property
    def last(self) -> bool:
        """On the last batch of the step (the fake drawn here is the one G's phase reuses)."""
        return self.index == len(self.batches) - 1

    @property
    def d_plain(self) -> nn.Module:
        return unwrap(self.state.D)

    @property
    def g_plain(self) -> nn.Module:
        return unwrap(self.state.G)


Loss = Callable[[Ctx], "torch.Tensor | None"]


def constant(value: float) -> Callable[[Ctx], float]:
    return lambda ctx: value


@dataclass(frozen=True)
class Term:
    """A regulariser added to its phase's loss as weight * loss. Lazy when every > 1: computed only on
    steps where state.step % every == 0 and then weighted by every, so its average pull matches the
    eager one (stylegan2's lazy regularisation). Skipped without being computed when its weight is 0;
    a loss of None means 'does not apply to this model' (InfoGAN's term on a D without a Q head)."""
    name: str  # metric key; the unweighted value is reported when `report`
    loss: Loss
    weight: Callable[[Ctx], float]
    every: int = 1
    report: bool = True

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"term {self.name}: every must be >= 1, got {self.every}")

    def due(self, ctx: Ctx) -> bool:
        return ctx.state.step % self.every == 0


@dataclass(frozen=True)
class Phase:
    net: str  # "D" or "G": whose optimizer steps
    loss: Loss  # the main loss; may leave tensors in ctx.v for later phases and terms
    terms: tuple[Term, ...] = ()
    per_batch: bool = False  # once per batch of the step (a critic's n_critic updates), else once
    scale: float = 1.0  # backward of scale * loss; the reported loss is unscaled (pix2pix halves D's)
    when: Callable[[Ctx], bool] | None = None  # runs only when this says so (SRGAN's D after warm-up)
    after: Callable[[Ctx], None] | None = None  # after the optimizer step (WGAN's weight clipping)
    report: Callable[[Ctx], dict] | None = None  # extra metrics once the phase is done

    def __post_init__(self):
        if self.net not in ("D", "G"):
            raise ValueError(f"phase net must be 'D' or 'G', got {self.net!r}")


def _total(phase: Phase, ctx: Ctx) -> torch.Tensor:
    with ctx.state.autocast():
        total = phase.loss(ctx)
        for term in phase.terms:
            if not term.due(ctx):
                continue
            w = term.weight(ctx)
            if not w:
                continue
            value = term.loss(ctx)
            if value is None:
                continue
            total = total + (w * term.every) * value if term.every > 1 else total + w * value
            if term.report:
                ctx.out[term.name] = value.detach()
    return total


def _update(phase: Phase, ctx: Ctx) -> None:
    state = ctx.state
    opt = state.opt_d if phase.net == "D" else state.opt_g
    total = _total(phase, ctx)
    opt.zero_grad(set_to_none=True)
    (phase.scale * total if phase.scale != 1.0 else total).backward()
    opt.step()
    if phase.after is not None:
        phase.after(ctx)
    ctx.out["loss_d" if phase.net == "D" else "loss_g"] = total.detach()


def run_phase(phase: Phase, ctx: Ctx) -> None:
    if phase.when is not None and not phase.when(ctx):
        return
    frozen = ctx.d_plain if phase.net == "G" else None
    if frozen is not None:
        set_requires_grad(frozen, False)
    try:
        for i in range(len(ctx.batches)) if phase.per_batch else (len(ctx.batches) - 1,):
            ctx.index = i
            _update(phase, ctx)
    finally:
        if frozen is not None:
            set_requires_grad(frozen, True)
    if phase.report is not None:
        ctx.out.update(phase.report(ctx))


@dataclass(frozen=True)
class Step:
    """A family's train step: `prepare` once (load the batch, set a growth stage), then the phases in
    order. Called as family.step(state, batches, cfg); returns detached 0-d metrics (loss_d, loss_g and
    each reported term), which the loop syncs only when it logs, and plain floats for what the host
    already knows (a growth stage's resolution and alpha): never a tensor made from host data."""
    phases: tuple[Phase, ...]
    prepare: Callable[[Ctx], None] | None = None

    def __call__(self, state: "TrainState", batches: list, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
        ctx = Ctx(state, cfg, list(batches))
        if self.prepare is not None:
            self.prepare(ctx)
        for phase in self.phases:
            run_phase(phase, ctx)
        return ctx.out
