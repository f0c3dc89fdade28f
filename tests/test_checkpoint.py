import json
import os
import pickle

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.checkpoint import (CheckpointError, load_checkpoint, rebuild, restore, rng_state, save_checkpoint,
                                 sidecar_path, to_checkpoint)
from gan_core.batches import ShardedBatches
from gan_core.train import build_state, train


def _trained(cfg, steps):
    s = build_state(cfg)
    images, _ = blobs(64)
    b = ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0)
    train(s, b.from_step(0), cfg)
    return s, b


def test_round_trip_restores_every_piece(tmp_path, cfg):
    s, _ = _trained(cfg, 4)
    path = tmp_path / "c.pt"
    sha = save_checkpoint(path, to_checkpoint(s, cfg, [rng_state()], {"dataset_sha256": "abc"}))
    assert json.loads(sidecar_path(path).read_text())["sha256"] == sha
    expected_next = torch.randn(3)  # what the RNG gives right after the save
    ckpt = load_checkpoint(path)
    cfg2, s2 = rebuild(ckpt)
    assert cfg2 == cfg and s2.step == s.step == 4 and s2.images_seen == s.images_seen
    for a, b in [(s.G, s2.G), (s.D, s2.D), (s.G_ema, s2.G_ema)]:
        for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    for o, o2 in [(s.opt_g, s2.opt_g), (s.opt_d, s2.opt_d)]:
        st, st2 = o.state_dict()["state"], o2.state_dict()["state"]
        assert st.keys() == st2.keys() and all(torch.equal(st[i]["exp_avg"], st2[i]["exp_avg"]) for i in st)
    assert ckpt["meta"] == {"dataset_sha256": "abc"}
    restore(build_state(cfg), ckpt, rank=0)  # restores RNG of rank 0
    assert torch.equal(torch.randn(3), expected_next)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(train={"steps": 6, "log_every": 3, "checkpoint_every": 3})
    images, _ = blobs(64)
    batches = lambda: ShardedBatches({"images": torch.from_numpy(images)}, 8, 0, 1, 0)
    torch.manual_seed(1)
    straight = build_state(cfg)
    train(straight, batches().from_step(0), cfg)

    torch.manual_seed(1)
    half_cfg = tiny_config(train={"steps": 3, "log_every": 3, "checkpoint_every": 3})
    first = build_state(cfg)
    train(first, batches().from_step(0), half_cfg)
    save_checkpoint(tmp_path / "c.pt", to_checkpoint(first, cfg, [rng_state()]))
    torch.manual_seed(999)  # a restarted process starts from other RNG state
    resumed = restore(build_state(cfg), load_checkpoint(tmp_path / "c.pt"), rank=0)
    train(resumed, batches().from_step(resumed.step), cfg)
    for k, v in straight.G_ema.state_dict().items():
        assert torch.equal(v, resumed.G_ema.state_dict()[k]), k
    for k, v in straight.D.state_dict().items():
        assert torch.equal(v, resumed.D.state_dict()[k]), k


def test_torn_or_edited_checkpoint_is_refused(tmp_path, cfg):
    s = build_state(cfg)
    path = tmp_path / "c.pt"
    save_checkpoint(path, to_checkpoint(s, cfg, [rng_state()]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="missing hash sidecar"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_pickle_payload_never_runs(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "ganpipe-checkpoint/1", "x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path, verify=False)
    assert not _Payload.marker.exists()


def test_no_partial_file_is_left_when_a_save_fails(tmp_path, cfg):
    path = tmp_path / "c.pt"
    with pytest.raises(Exception):
        save_checkpoint(path, {"format": "x", "step": 0, "bad": lambda: 0})  # lambdas cannot be saved
    assert list(tmp_path.iterdir()) == []


def test_each_rank_gets_back_its_own_family_state(tmp_path, cfg):
    """Rank-local state (CycleGAN's pools of each rank's past fakes) is saved per rank and restored to
    the rank it came from; older checkpoints without it give every rank the saved `extra`."""
    s, _ = _trained(cfg, 2)
    s.world = 2
    ranks = [{"pool": torch.zeros(2)}, {"pool": torch.ones(2)}]
    path = tmp_path / "c.pt"
    save_checkpoint(path, to_checkpoint(s, cfg, [rng_state(), rng_state()], extras=ranks))
    ckpt = load_checkpoint(path)
    for rank in (0, 1):
        other = build_state(cfg)
        other.world = 2
        restore(other, ckpt, rank=rank)
        assert torch.equal(other.extra["pool"], ranks[rank]["pool"])
    old = {k: v for k, v in ckpt.items() if k != "extra_ranks"}
    other = build_state(cfg)
    other.world = 2
    restore(other, {**old, "extra": {"pool": torch.full((2,), 7.0)}}, rank=1)
    assert torch.equal(other.extra["pool"], torch.full((2,), 7.0))
