"""The phase runner: lazy terms, skipped terms and phases, D frozen while G learns, scaled backward."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gan_core.config import ConfigError, PipelineConfig
from gan_core.phases import Phase, Step, Term


def _state(step: int = 0):
    torch.manual_seed(0)
    G, D = nn.Linear(2, 2), nn.Linear(2, 1)
    return SimpleNamespace(G=G, D=D, step=step, autocast=lambda: torch.autocast("cpu", enabled=False),
                           opt_g=torch.optim.SGD(G.parameters(), lr=1.0), opt_d=torch.optim.SGD(D.parameters(), lr=1.0))


def _d_weight_after(step: int, every: int) -> torch.Tensor:
    state = _state(step)
    term = Term("reg", lambda ctx: ctx.state.D.weight.sum(), lambda ctx: 0.5, every=every)
    Step((Phase("D", lambda ctx: ctx.state.D.bias.sum() * 0, terms=(term,)),))(state, [{}], None)
    return state.D.weight.detach().clone()


def test_a_lazy_term_runs_on_its_interval_weighted_by_it():
    w0 = _state().D.weight.detach().clone()
    # SGD lr 1: the weight moves by weight * every * d(sum)/dw = 0.5 * 4 on due steps, not at all otherwise
    assert torch.allclose(_d_weight_after(8, every=4), w0 - 2.0)
    assert torch.equal(_d_weight_after(9, every=4), w0)
    assert torch.allclose(_d_weight_after(9, every=1), w0 - 0.5)


def test_terms_with_weight_zero_or_no_value_are_neither_computed_nor_reported():
    calls = []

    def counted(ctx):
        calls.append(1)
        return ctx.state.G.weight.sum()

    state = _state()
    out = Step((Phase("G", lambda ctx: ctx.state.G.weight.sum(), terms=(
        Term("off", counted, lambda ctx: 0.0), Term("none", lambda ctx: None, lambda ctx: 1.0))),))(state, [{}], None)
    assert calls == [] and set(out) == {"loss_g"}


def test_g_phase_freezes_d_and_restores_it_even_when_the_loss_raises():
    state, seen = _state(), []

    def g_loss(ctx):
        seen.append(all(not p.requires_grad for p in ctx.state.D.parameters()))
        return ctx.state.D(ctx.state.G(torch.ones(1, 2))).sum()

    Step((Phase("G", g_loss),))(state, [{}], None)
    assert seen == [True] and state.D.weight.grad is None  # D got no gradient from G's phase
    assert all(p.requires_grad for p in state.D.parameters())

    def boom(ctx):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        Step((Phase("G", boom),))(state, [{}], None)
    assert all(p.requires_grad for p in state.D.parameters())


def test_per_batch_phases_run_once_per_batch_and_scale_only_the_backward():
    state, seen = _state(), []

    def d_loss(ctx):
        seen.append((ctx.index, ctx.last))
        return ctx.state.D.bias.sum() * 2

    bias0 = state.D.bias.detach().clone()
    out = Step((Phase("D", d_loss, per_batch=True, scale=0.5),))(state, [{}, {}, {}], None)
    assert seen == [(0, False), (1, False), (2, True)]
    assert torch.allclose(state.D.bias, bias0 - 3.0)  # three steps of 0.5 * 2
    assert out["loss_d"].item() == pytest.approx(2 * bias0.item() - 2 * 2.0, abs=1e-6)  # unscaled, last batch


def test_a_phase_can_be_switched_off_for_a_step():
    state = _state()
    w0 = state.D.weight.detach().clone()
    out = Step((Phase("D", lambda ctx: ctx.state.D.weight.sum(), when=lambda ctx: False),))(state, [{}], None)
    assert out == {} and torch.equal(state.D.weight, w0)


@pytest.mark.parametrize("arch", ["pix2pix", "cyclegan", "srgan"])
def test_single_critic_families_refuse_n_critic_above_one(arch):
    with pytest.raises(ConfigError, match=r"^train.n_critic: .* set 1, got 3"):
        PipelineConfig.from_dict({"model": {"arch": arch}, "data": {"resolution": 32}, "train": {"n_critic": 3}})
