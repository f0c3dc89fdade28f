"""DP-SGD under DDP (gan_core/privacy.py): two gloo processes. One D update over two ranks equals one
process clipping the union batch; the noise is one process's noise (rank 0 adds it once, not once per
rank); a DP run of a real family keeps its replicas equal and accounts the global sample rate."""
from types import SimpleNamespace

import pytest
import torch

from conftest import blobs, tiny_config
from gan_core.batches import ShardedBatches
from gan_core.privacy import KEY, _optimizer, make_private
from gan_core.replicas import ReplicaMismatch, check_replicas
from gan_core.train import build_state, distribute, train
from gloo import ranks

N = 96  # training images
C = 1.0  # max_grad_norm


def _record(sigma: float) -> dict:
    return {"noise_multiplier": sigma, "max_grad_norm": C, "sample_rate": 0.1, "delta": 1e-3, "accountant": "rdp",
            "target_epsilon": 0.0, "history": [], "steps": 0, "epsilon": 0.0, "stop_at": 10, "stopped_at": None}


def _update(x: torch.Tensor, sigma: float, d_in: int) -> torch.Tensor:
    """One DP-SGD step (lr 1) of a bias-free linear D on rows x: the parameter change."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    D = torch.nn.Linear(d_in, 1, bias=False)
    before = D.weight.detach().clone()
    gsm = GradSampleModule(D, loss_reduction="mean")
    opt = _optimizer(SimpleNamespace(opt_d=torch.optim.SGD(D.parameters(), lr=1.0), step=0), _record(sigma),
                     len(x), 10, 1, lambda step: False)
    (gsm(x) ** 2).mean().backward()
    opt.step()
    return (D.weight.detach() - before).flatten()


def _rows(d_in: int) -> torch.Tensor:
    # 8 rows, some with gradients over the clipping norm and some under it
    rows = torch.randn(8, d_in, generator=torch.Generator().manual_seed(7))
    return rows * torch.linspace(0.05, 2, 8)[:, None]


def _gradient_rank(rank: int):
    clean = _update(_rows(6)[rank * 4:(rank + 1) * 4], 0.0, 6)
    torch.manual_seed(100 + rank)  # distinct streams: only rank 0's may reach the update
    noise = _update(torch.zeros(4, 4000), 1.0, 4000)  # zero input: zero gradients, the update is the noise
    # numpy, not tensors: a tensor crosses the queue as a shared-memory handle that dies with this process
    return clean.numpy(), noise.numpy()


def _dcgan_rank(rank: int):
    cfg = tiny_config(model={"arch": "dcgan"}, train={"steps": 4, "batch_size": 16, "num_workers": 2,
                                                      "log_every": 2, "checkpoint_every": 4},
                      privacy={"enabled": True, "noise_multiplier": 1.0})
    torch.manual_seed(0)  # identical initial weights on both ranks, as the Ray worker does
    state = build_state(cfg)
    make_private(state, cfg, N)
    distribute(state, 2)
    torch.manual_seed(1 + rank)
    images, _ = blobs(N)
    batches = ShardedBatches({"images": torch.from_numpy(images)}, cfg.train.per_worker_batch, rank, 2, 0)
    train(state, batches.from_step(0), cfg)
    try:
        check_replicas({"G": state.G, "D": state.D, "G_ema": state.G_ema}, state.step)
        verdict = "equal"
    except ReplicaMismatch as e:
        verdict = str(e)
    return verdict, type(state.D).__name__, state.extra[KEY]


@pytest.mark.timeout(300)
def test_two_ranks_clip_per_sample_and_add_one_process_noise():
    results = ranks(_gradient_rank)
    (clean0, noise0), (clean1, noise1) = (map(torch.from_numpy, results[r]) for r in (0, 1))
    single = _update(_rows(6), 0.0, 6)  # one process, the union batch of 8 rows, no noise
    assert torch.allclose(clean0, single, atol=1e-6) and torch.equal(clean0, clean1)
    assert torch.equal(noise0, noise1)  # both ranks took the same step
    # the update is noise / global batch: std sigma * C / 8 (rank 0's noise once; twice would be x sqrt 2)
    assert noise0.std().item() == pytest.approx(1.0 * C / 8, rel=0.06)


@pytest.mark.timeout(300)
def test_a_dp_dcgan_under_ddp_keeps_one_replica_and_accounts_the_global_batch():
    results = ranks(_dcgan_rank)
    for rank in (0, 1):
        verdict, d_type, rec = results[rank]
        assert verdict == "equal", verdict
        assert d_type != "DistributedDataParallel"  # the DP optimizer reduces D's gradients itself
        assert rec["sample_rate"] == 16 / N and rec["history"] == [[1.0, 16 / N, 4]]
    assert results[0][2] == results[1][2]
