"""Ranks of a real gloo process group on 127.0.0.1, for the DDP tests: `ranks(work, *args)` runs
`work(rank, *args)` in `world` spawned processes, each inside an initialised group with one thread,
and returns {rank: what work returned}. A rank that raises fails the test with its exit code.
`work` returns plain values or numpy arrays, not tensors: torch.multiprocessing sends a tensor as a
shared-memory handle, which is gone when its process exits before the test reads it (EOFError)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from servers import free_port


def _rank(rank: int, world: int, port: int, work, args: tuple, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        out.put((rank, work(rank, *args)))
    finally:
        dist.destroy_process_group()


def ranks(work, *args, world: int = 2, timeout: float = 240) -> dict:
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, work, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results
