"""DDP replicas checked, not assumed: two gloo processes train a real family under DDP; the replica
check passes while gradients are averaged and fails, naming the network, when they are not."""

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.replicas import ReplicaMismatch, check_replicas, digest
from gan_core.train import build_state, distribute, train
from gloo import ranks


def _rank(rank: int, averaged: bool) -> str:
    cfg = tiny_config(train={"steps": 6, "batch_size": 16, "num_workers": 2})
    torch.manual_seed(0)  # identical initial weights on both ranks, as the Ray worker does
    state = distribute(build_state(cfg, "cpu"), 2)
    torch.manual_seed(1 + rank)  # distinct latent streams and batches
    images, labels = blobs(64)
    x = torch.from_numpy(images).float().div(127.5).sub(1.0)[rank::2]
    batches = ({"images": x[i % 4 * 8:(i % 4 + 1) * 8]} for i in range(100))
    if not averaged:  # every backward skips DDP's all-reduce: each rank steps on its own gradients
        state.G.require_backward_grad_sync = state.D.require_backward_grad_sync = False  # = no_sync()
    train(state, batches, cfg)
    try:
        check_replicas({"G": state.G, "D": state.D, "G_ema": state.G_ema}, state.step)
        return "equal"
    except ReplicaMismatch as e:
        return str(e)


def _run(averaged: bool) -> dict[int, str]:
    return ranks(_rank, averaged)


@pytest.mark.timeout(300)
def test_replicas_stay_equal_while_gradients_are_averaged():
    assert _run(averaged=True) == {0: "equal", 1: "equal"}


@pytest.mark.timeout(300)
def test_replicas_that_step_on_local_gradients_are_caught_on_every_rank():
    results = _run(averaged=False)
    for rank in (0, 1):
        assert "DDP replicas differ from rank 0 at step 6: D on rank 1, G on rank 1, G_ema on rank 1" in results[rank]


def test_the_digest_sees_a_single_element_change_and_only_that():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = digest(net)
    assert torch.equal(before, digest(net))
    with torch.no_grad():  # swap two elements: the plain sum stays, the position-weighted one moves
        w = net[0].weight.view(-1)
        w[0], w[1] = w[1].clone(), w[0].clone()
    after = digest(net)
    assert after[0, 0] == pytest.approx(before[0, 0].item()) and not torch.equal(before[0], after[0])
    assert torch.equal(before[1:], after[1:])
