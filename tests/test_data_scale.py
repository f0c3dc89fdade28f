"""Prepared data that scales past a worker's memory: load_prepared(mmap=True) maps the files and
ShardedBatches reads only the rows of each batch, with exactly the batches of the in-memory path.

The limit is RLIMIT_DATA, which Linux (>= 4.7) counts over private writable mappings and brk: what
numpy and torch allocate, not the read-only file mappings of a memmap. Measured here (torch 2.13
CPU, Linux 6.18): importing torch and training a small DCGAN needs ~315 MiB of it (fails at 300,
runs at 320), so LIMIT = 384 MiB leaves it room, and the 469 MiB dataset cannot fit inside it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_core.batches import RowSubset, ShardedBatches
from gan_core.data import load_prepared, training_arrays, write_prepared

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 384
N_IMAGES = 160_000  # (3, 32, 32) uint8 each: 469 MiB of images.npy, 1.22x the limit

# Runs in a child under the limit: load (mapped or whole), then train 20 DCGAN steps through
# ShardedBatches as the Ray worker does; prints the process's memory at the end.
TRAIN = """
import json, resource, sys
mode, data_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
import torch
torch.set_num_threads(1)
from gan_core.config import PipelineConfig
from gan_core.batches import ShardedBatches
from gan_core.data import load_prepared, training_arrays
from gan_core.train import build_state, train

cfg = PipelineConfig.from_dict({"data": {"resolution": 32, "channels": 3},
                                "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
                                "train": {"steps": 20, "batch_size": 16, "num_workers": 1, "log_every": 10,
                                          "checkpoint_every": 100}})
if mode == "mmap":
    aligned = training_arrays(load_prepared(data_dir, mmap=True))[0]
else:  # the path before memory mapping: whole arrays in memory, as tensors
    aligned = {k: torch.from_numpy(a) for k, a in training_arrays(load_prepared(data_dir))[0].items()}
state = build_state(cfg, "cpu")
train(state, ShardedBatches(aligned, 16, 0, 1, 0).from_step(0), cfg)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print("RESULT " + json.dumps({"step": state.step, **{k: int(status[k].split()[0]) // 1024
                              for k in ("VmData", "RssAnon", "RssFile")}}))
"""


def _train_under_limit(mode: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # thread stacks count too
    return subprocess.run([sys.executable, "-c", TRAIN, mode, str(data_dir), str(LIMIT_MIB << 20)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA counts mappings this way on Linux only")
def test_a_dataset_larger_than_the_memory_limit_trains_memory_mapped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 3, 32, 32), dtype=np.uint8)
    write_prepared(tmp_path / "big", images, None, {"name": "big"})
    del images
    assert (tmp_path / "big" / "images.npy").stat().st_size > (LIMIT_MIB << 20) * 1.2
    whole = _train_under_limit("memory", tmp_path / "big")  # the limit bites: the old path cannot load it
    assert whole.returncode != 0 and "Unable to allocate" in whole.stderr, whole.stderr[-2000:]
    mapped = _train_under_limit("mmap", tmp_path / "big")
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    result = json.loads(mapped.stdout.split("RESULT ", 1)[1])
    assert result["step"] == 20 and result["VmData"] < LIMIT_MIB, result


def _labelled(tmp_path, n=50):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 5, n).astype(np.int64)
    b = rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
    write_prepared(tmp_path / "u", images, labels, {"kind": "unpaired", "heldout": 3}, images_b=b)
    return tmp_path / "u"


def _stream(batches: ShardedBatches, step: int, n: int) -> list[dict[str, torch.Tensor]]:
    it = batches.from_step(step)
    return [next(it) for _ in range(n)]


def _same(xs, ys) -> bool:
    return all(x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)
               for x, y in zip(xs, ys, strict=True))


@pytest.mark.parametrize("rank", [0, 1])
def test_memory_mapped_batches_are_the_in_memory_batches(tmp_path, rank):
    folder = _labelled(tmp_path)
    mapped = load_prepared(folder, mmap=True)
    assert isinstance(mapped.images, np.memmap) and not mapped.images.flags.writeable
    tensors = [{k: torch.from_numpy(a) for k, a in arrays.items()} for arrays in training_arrays(load_prepared(folder))]
    memory = ShardedBatches(tensors[0], 4, rank, 2, 7, tensors[1] or None)  # what the worker built before
    aligned, independent = training_arrays(mapped)  # views of the maps
    mm = ShardedBatches(aligned, 4, rank, 2, 7, independent or None)
    assert _same(_stream(memory, 0, 14), _stream(mm, 0, 14))  # 5 batches per epoch: crosses two epochs
    assert _same(_stream(memory, 7, 6), _stream(mm, 7, 6))  # and resumes mid-epoch to the same rows


def test_a_client_shard_view_gives_the_batches_of_its_copy(tmp_path):
    mapped = training_arrays(load_prepared(_labelled(tmp_path), mmap=True))[0]
    rows = np.sort(np.random.default_rng(2).choice(len(mapped["images"]), 20, replace=False))
    copied = {k: torch.from_numpy(a[rows].copy()) for k, a in mapped.items()}  # the federated client before
    view = {k: RowSubset(a, rows) for k, a in mapped.items()}
    assert _same(_stream(ShardedBatches(copied, 4, 0, 1, 3), 0, 12), _stream(ShardedBatches(view, 4, 0, 1, 3), 0, 12))


class _Recorded:
    """An array that records which rows were read from it."""

    def __init__(self, a: np.ndarray):
        self.a, self.shape, self.dtype, self.read = a, a.shape, a.dtype, set()

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, rows):
        self.read.update(int(r) for r in rows)
        return self.a[rows]


def test_each_rank_reads_only_its_shard_of_the_epoch():
    images = np.arange(43, dtype=np.uint8).reshape(43, 1, 1, 1)
    seen = []
    for rank in range(2):
        rec = _Recorded(images)
        batches = ShardedBatches({"images": rec}, 4, rank, 2, 11)
        _stream(batches, 0, batches.per_epoch)  # one epoch: 5 batches of 4 out of this rank's 21 rows
        batches.sampler.set_epoch(0)
        assert rec.read <= set(batches.sampler) and len(rec.read) == batches.per_epoch * 4
        seen.append(rec.read)
    assert not seen[0] & seen[1]
