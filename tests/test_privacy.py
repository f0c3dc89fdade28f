"""DP-GAN (gan_core/privacy.py, Opacus): the privacy section's checks, D's layers, the epsilon the
project reports against Opacus' accountant classes used directly, a budget that stops training, a DP
step that noises D and leaves G's gradients alone, a resume that continues epsilon exactly, the
registered version's tags and the registry's two privacy refusals (pure, then on a real MLflow
registry)."""
from __future__ import annotations

import copy

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from conftest import blobs, tiny_config
from flows.registry.gate import BUDGET_ENV, epsilon_budget, epsilon_of, privacy_refusal
from flows.registry.promotion import Version, refusal
from gan_core.checkpoint import load_checkpoint, restore, rng_state, save_checkpoint, to_checkpoint
from gan_core.config import ConfigError
from gan_core.batches import ShardedBatches
from gan_core.phases import set_requires_grad
from gan_core.privacy import KEY, TAGS, make_private, summary
from gan_core.state import Callback
from gan_core.train import build_state, train

N = 96  # training images: sample rate 8 / 96


def _cfg(steps=6, **privacy):
    return tiny_config(model={"arch": "dcgan"}, train={"steps": steps, "log_every": 2, "checkpoint_every": 3},
                       privacy={"enabled": True, **privacy})


def _batches(step=0):
    images, _ = blobs(N)
    return ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0).from_step(step)


def _private(cfg):
    s = build_state(cfg)
    make_private(s, cfg, N)
    return s


def _accountant(cls, sigma, q, steps):
    acc = cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc


# ---------------------------------------------------------------- config and layers

@pytest.mark.parametrize("section, field", [({"max_grad_norm": 0}, "privacy.max_grad_norm"),
                                            ({"accountant": "gdp"}, "privacy.accountant"),
                                            ({"delta": 1.5}, "privacy.delta"),
                                            ({"target_epsilon": -1}, "privacy.target_epsilon"),
                                            ({}, "privacy.noise_multiplier")])  # on, but neither noise nor target
def test_bad_privacy_settings_name_the_field(section, field):
    with pytest.raises(ConfigError) as e:
        _cfg(**section)
    assert e.value.field == field


def test_unsupported_families_are_refused():
    tiny_config(train={"num_workers": 2}, privacy={"enabled": True, "noise_multiplier": 1.0})  # DDP is fine
    with pytest.raises(ConfigError, match="privacy.enabled.*wgan_gp"):
        tiny_config(model={"arch": "wgan_gp"}, privacy={"enabled": True, "noise_multiplier": 1.0})
    assert "privacy" not in tiny_config().to_dict()  # off: the params hash of older configs is unchanged


def test_d_trains_with_group_norm_instead_of_batch_norm():
    cfg = tiny_config(model={"arch": "dcgan", "d_channels": 16}, data={"resolution": 16},
                      privacy={"enabled": True, "noise_multiplier": 1.0})
    kinds = {type(m).__name__ for m in build_state(cfg).D.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    assert any("BatchNorm" in type(m).__name__ for m in build_state(tiny_config(
        model={"arch": "dcgan", "d_channels": 16}, data={"resolution": 16})).D.modules())


# ---------------------------------------------------------------- the accountant

@pytest.mark.parametrize("accountant, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_reported_epsilon_is_the_accountants_own(accountant, cls):
    cfg = _cfg(steps=6, noise_multiplier=1.1, accountant=accountant, delta=1e-3)
    s = train(_private(cfg), _batches(), cfg)
    rec = s.extra[KEY]
    expected = _accountant(cls, 1.1, 8 / N, 6).get_epsilon(delta=1e-3)
    assert rec["steps"] == 6 and rec["history"] == [[1.1, 8 / N, 6]]
    assert rec["epsilon"] == pytest.approx(expected, rel=1e-9)
    tags = summary(rec)
    assert set(tags) == {f"privacy.{k}" for k in TAGS}
    assert float(tags["privacy.epsilon"]) == pytest.approx(expected, rel=1e-9)
    assert (tags["privacy.delta"], tags["privacy.noise_multiplier"], tags["privacy.max_grad_norm"],
            tags["privacy.steps"], tags["privacy.accountant"]) == ("0.001", "1.1", "1.0", "6", accountant)
    assert float(tags["privacy.sample_rate"]) == 8 / N


def test_a_target_alone_calibrates_the_noise_to_spend_it_at_the_last_step():
    cfg = _cfg(steps=6, target_epsilon=4.0)
    s = train(_private(cfg), _batches(), cfg)
    rec = s.extra[KEY]
    assert s.step == 6 and rec["stopped_at"] is None and rec["delta"] == 0.1 / N
    eps = _accountant(RDPAccountant, rec["noise_multiplier"], 8 / N, 6).get_epsilon(delta=0.1 / N)
    assert eps <= 4.0 and eps == pytest.approx(rec["epsilon"], rel=1e-9) and eps > 3.5  # spent, not squandered


class Checkpoints(Callback):
    def __init__(self):
        self.steps = []

        self.logged = {}

    def on_checkpoint(self, state):
        self.steps.append(state.step)

    def on_log(self, state, metrics):
        self.logged[state.step] = metrics["epsilon"]


def test_a_tiny_budget_stops_training_when_spent_and_checkpoints_there(capsys, tmp_path):
    q, delta = 8 / N, 0.1 / N
    # the largest step count the budget allows, by the accountant used directly
    eps = [_accountant(RDPAccountant, 1.0, q, k).get_epsilon(delta=delta) for k in range(1, 13)]
    budget = (eps[3] + eps[4]) / 2  # 4 steps fit, 5 do not
    cfg = _cfg(steps=12, noise_multiplier=1.0, target_epsilon=budget)
    seen = Checkpoints()
    s = train(_private(cfg), _batches(), cfg, [seen])
    rec = s.extra[KEY]
    assert s.step == 4 and rec["stopped_at"] == 4 and rec["steps"] == 4
    assert rec["epsilon"] == pytest.approx(eps[3], rel=1e-9) and rec["epsilon"] <= budget
    assert seen.steps[-1] == 4  # the stopping step is checkpointed
    # epsilon spent so far is a training metric at every log step (log_every 2), as the accountant has it
    assert seen.logged == pytest.approx({2: eps[1], 4: eps[3]}, rel=1e-9)
    assert "training stops there" in capsys.readouterr().out
    # a re-triggered run resumes from that checkpoint and stops at once: no D update, no epsilon spent
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(s, cfg, [rng_state()]))
    again = restore(build_state(cfg), load_checkpoint(tmp_path / "c.pt"), rank=0)
    make_private(again, cfg, N)
    d = {k: v.clone() for k, v in again.D.state_dict().items()}
    train(again, _batches(again.step), cfg)
    assert again.step == 4 and again.extra[KEY] == rec
    assert all(torch.equal(v, again.D.state_dict()[k]) for k, v in d.items())
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):  # not even one step fits
        _private(_cfg(steps=12, noise_multiplier=1.0, target_epsilon=eps[0] / 2))


# ---------------------------------------------------------------- one DP step

def test_a_dp_step_changes_d_and_leaves_g_s_gradients_clean():
    cfg = _cfg(noise_multiplier=1.0)
    s = _private(cfg)
    d0 = [p.detach().clone() for p in s.D.parameters()]
    images, _ = blobs(8)
    s.family.step(s, [{"images": torch.from_numpy(images)}], cfg.train)
    assert any(not torch.equal(a, b) for a, b in zip(d0, s.D.parameters()))
    assert s.extra[KEY]["steps"] == 1  # one noised, accounted D update
    per_sample = [p.grad_sample.clone() for p in s.D.parameters()]  # what D's update used
    assert per_sample[0].shape[0] == 8

    # G's phase through the frozen, hooked D: no per-sample gradients pile up on D, and G's gradient
    # is exactly the one a plain copy of D gives
    plain = build_state(cfg).D
    plain.load_state_dict(s.D.state_dict())
    z = torch.randn(8, cfg.model.z_dim)
    grads = []
    for D in (s.D, plain):
        s.opt_g.zero_grad(set_to_none=True)
        set_requires_grad(D, False)
        s.loss.g(D(s.G(z), None)).backward()
        set_requires_grad(D, True)
        grads.append([p.grad.clone() for p in s.G.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(torch.equal(a, p.grad_sample) for a, p in zip(per_sample, s.D.parameters()))
    assert all(not getattr(m, "activations", []) for m in s.D.modules())


# ---------------------------------------------------------------- resume

def test_resume_continues_epsilon_and_the_noise_exactly(tmp_path):
    cfg = _cfg(steps=6, noise_multiplier=1.0)
    torch.manual_seed(1)
    straight = train(_private(cfg), _batches(), cfg)

    torch.manual_seed(1)
    first = _private(cfg)
    train(first, _batches(), _cfg(steps=3, noise_multiplier=1.0))
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(first, cfg, [rng_state()]))
    torch.manual_seed(999)
    resumed = restore(build_state(cfg), load_checkpoint(tmp_path / "c.pt"), rank=0)
    assert resumed.extra[KEY]["history"] == [[1.0, 8 / N, 3]]
    make_private(resumed, cfg, N)
    train(resumed, _batches(resumed.step), cfg)
    assert resumed.extra[KEY] == straight.extra[KEY]
    for k, v in straight.D.state_dict().items():
        assert torch.equal(v, resumed.D.state_dict()[k]), k


# ---------------------------------------------------------------- registry refusals (pure)

def _tags(eps=None, fp="fp", decision="not promoted"):
    t = {"eval.fingerprint_id": fp, "promotion.decision": decision}
    return t if eps is None else {**t, "privacy.epsilon": repr(eps)}


def test_privacy_refusals():
    assert epsilon_of(_tags()) is None and epsilon_of(_tags(3.5)) == 3.5
    over = privacy_refusal(_tags(12.0), None, 10.0, allow_non_private=True)
    assert "exceeds the registry budget" in over[0] and over[1] is False  # no flag overrides it
    assert privacy_refusal(_tags(9.0), None, 10.0, False) is None
    assert privacy_refusal(_tags(12.0), None, 0.0, False) is None  # no budget configured
    assert privacy_refusal(_tags(float("nan")), None, 10.0, False)[1] is False  # unknown epsilon: over budget
    plain = privacy_refusal(_tags(), _tags(5.0), 10.0, allow_non_private=False)
    assert "without differential privacy" in plain[0] and plain[1] is True
    assert privacy_refusal(_tags(), _tags(5.0), 10.0, allow_non_private=True) is None
    assert privacy_refusal(_tags(), _tags(), 10.0, False) is None  # non-DP over non-DP: the metric decides
    assert privacy_refusal(_tags(4.0), _tags(), 10.0, False) is None  # DP may replace non-DP


def test_manual_promotion_refusals_and_the_budget_setting():
    champ = Version("1", _tags(5.0, decision="promoted"))
    assert "without differential privacy" in refusal(Version("2", _tags()), champ, force=False)
    assert refusal(Version("2", _tags()), champ, force=False, allow_non_private=True) is None
    assert refusal(Version("2", _tags()), champ, force=True) is None  # --force says so too
    over = refusal(Version("3", _tags(50.0)), champ, force=True, max_epsilon=10.0)
    assert "exceeds the registry budget" in over and "raise the budget" in over  # even forced
    assert epsilon_budget({}) == 0.0 and epsilon_budget({BUDGET_ENV: "8"}) == 8.0
    with pytest.raises(ValueError, match=BUDGET_ENV):
        epsilon_budget({BUDGET_ENV: "lots"})


def test_registering_a_dp_config_without_an_accountant_record_is_refused():
    from flows.stages.register import privacy_tags

    cfg = _cfg(noise_multiplier=1.0)
    with pytest.raises(ValueError, match="not trained with DP-SGD"):
        privacy_tags(cfg, {})
    assert privacy_tags(tiny_config(), {}) == {}
    s = train(_private(cfg), _batches(), _cfg(steps=2, noise_multiplier=1.0))
    assert privacy_tags(cfg, copy.deepcopy(s.extra))["privacy.steps"] == "2"


# ---------------------------------------------------------------- slow: a real MLflow registry

@pytest.mark.slow
def test_registry_refuses_over_budget_and_non_private_replacements(tmp_path, monkeypatch):
    from flows.registry.gate import Scored
    from flows.registry.promotion import PromotionRefused, move_champion
    from flows.registry.tracking import CHAMPION, client
    from flows.stages.register import promote

    c, name, lock = client(f"sqlite:///{tmp_path / 'mlflow.db'}"), "dp-model", tmp_path / "lock"
    c.create_registered_model(name)
    tags = {"dp": _tags(5.0), "over": _tags(50.0), "plain": _tags(), "plain2": _tags()}
    fid = {"dp": 20.0, "over": 10.0, "plain": 5.0, "plain2": 4.0}  # each better than the one before
    v = {k: str(c.create_model_version(name, source=f"file:///none/{k}", tags={**t, "eval.fid": repr(fid[k])}).version)
         for k, t in tags.items()}
    monkeypatch.setenv(BUDGET_ENV, "10")
    auto = lambda k, allow=False: promote(c, name, v[k], Scored(fid[k], "fp", v[k]), 0.0, lock, allow)  # noqa: E731
    assert auto("dp")[0]
    promoted, reason = auto("over")  # a better FID, but over the budget
    assert not promoted and "exceeds the registry budget" in reason
    assert c.get_model_version(name, v["over"]).tags["promotion.decision"] == "refused"
    promoted, reason = auto("plain")
    assert not promoted and "without differential privacy" in reason
    assert str(c.get_registered_model(name).aliases[CHAMPION]) == v["dp"]
    assert auto("plain", allow=True)[0]  # params privacy.allow_non_private
    c.set_registered_model_alias(name, CHAMPION, v["dp"])
    with pytest.raises(PromotionRefused, match="exceeds the registry budget"):
        move_champion(c, name, v["over"], "try", force=True, lock_path=lock)
    with pytest.raises(PromotionRefused, match="without differential privacy"):
        move_champion(c, name, v["plain2"], "try", force=False, lock_path=lock)
    assert move_champion(c, name, v["plain2"], "ok", force=False, lock_path=lock, allow_non_private=True).version \
        == v["plain2"]
