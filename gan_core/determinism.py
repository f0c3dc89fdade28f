"""train.deterministic: the same inputs give the same weights on a GPU too, and a resumed run the
weights of an uninterrupted one, at a cost in speed (issue 17, item 6).

CPU kernels are deterministic for a given thread count already, so on the CPU the flag changes nothing
measurable (README: Performance). On CUDA it turns on what PyTorch's reproducibility notes list:
deterministic algorithms (an op that has none raises, naming itself, instead of silently varying),
the cuBLAS workspace setting those need (CUBLAS_WORKSPACE_CONFIG, read when the cuBLAS handle is
created: before the first matmul of the process), and cuDNN's deterministic, non-benchmarking modes.
Off by default: on the CPU, where this project trains today, it buys nothing; on a GPU strict mode fails
on the first op with no deterministic CUDA kernel and deterministic cuDNN algorithms cost speed, so it is
what a user asks for, and a GPU run without it says in its lineage that bit-exact resume is not promised
(statement below).
"""
from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"  # PyTorch's reproducibility notes: the larger of the two documented settings


def apply(deterministic: bool) -> None:
    """Set this process up for train.deterministic; before any CUDA work (the worker's first lines)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:  # autotuning picks kernels by timing: run to run, a different one may win
        torch.backends.cudnn.benchmark = False


def statement(deterministic: bool, use_gpu: bool) -> str:
    """What the run's lineage records about determinism (tag lineage.determinism / train.determinism)."""
    if not use_gpu:
        return "bit-exact: CPU kernels" + (", deterministic algorithms on" if deterministic else "")
    if deterministic:
        return f"bit-exact: deterministic algorithms, CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}, cudnn deterministic"
    return "not guaranteed: train.deterministic=false on GPU (cuDNN autotuning); resume is not bit-exact"
