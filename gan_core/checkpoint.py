"""Self-describing, atomic checkpoints: everything needed to rebuild and resume, nothing pickled.

A checkpoint is a dict of tensors and primitives (config, step, state dicts, RNG states per rank,
lineage metadata) saved with torch.save and loaded with `weights_only=True`, so loading a file
can never run code from it. Writes go to a temporary file in the same folder, are fsynced, then
renamed into place; a sidecar `<name>.json` holds the sha256 so a torn or edited file is refused.
The checkpoint also carries the sha256 of its own config and the data sampler's position, so a
config edited after the save, or a sampler that would resume on other batches, is refused too.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gan_core.blobs import torch_bytes
from gan_core.config import PipelineConfig
from gan_core.files import canonical_json, file_sha256, json_bytes, room_for, write_files_atomic
from gan_core.state import TrainState
from gan_core.train import batch_position, build_state
from gan_core.steps import unwrap

# /2 added config_sha256, sampler and scaler; older formats are named so the refusal says why
FORMAT = "ganpipe-checkpoint/2"
OLD_FORMATS = {"ganpipe-checkpoint/1": "it has no config hash, sampler position or grad-scaler state"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, torn, tampered with or of an unknown format."""


# ---- RNG -------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors/primitives (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = s["python"]
    random.setstate((version, tuple(internal), gauss_next))


def gather_rng_states() -> list[dict[str, Any]]:
    """RNG state of every rank (index = rank), so a resumed run continues each rank's stream."""
    return gather(rng_state())


def gather(mine: Any) -> list[Any]:
    """`mine` from every rank (index = rank); [mine] outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


# ---- state <-> dict ----------------------------------------------------------------------------
def to_checkpoint(state: TrainState, cfg: PipelineConfig, rng: list[dict], meta: dict | None = None,
                  extras: list[dict] | None = None) -> dict:
    """`extras`: every rank's `state.extra` (index = rank) where it is rank-local (CycleGAN's image
    pools hold each rank's own past fakes); left out, rank 0's stands for all."""
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "config_sha256": cfg.params_hash(),
        "step": state.step,
        "images_seen": state.images_seen,
        "world": state.world,
        "n_classes": state.n_classes,
        "models": {"G": unwrap(state.G).state_dict(), "D": unwrap(state.D).state_dict(),
                   "G_ema": state.G_ema.state_dict()},
        "optimizers": {"G": state.opt_g.state_dict(), "D": state.opt_d.state_dict()},
        "scaler": state.scaler.state_dict() if state.scaler is not None else {},
        "sampler": sampler_state(state.step, state.world, cfg),
        "extra": state.extra,
        "extra_ranks": extras if extras is not None else [state.extra],
        "rng": rng,
        "meta": meta or {},
    }


def sampler_state(step: int, world: int, cfg: PipelineConfig) -> dict[str, int]:
    """Where the data sampler stands at `step`: what a resumed run must read next."""
    t = cfg.train
    return {"seed": t.seed, "position": batch_position(step, cfg), "per_worker_batch": t.per_worker_batch,
            "world": world}


def check_consistent(ckpt: dict) -> PipelineConfig:
    """Refuse a checkpoint whose config was edited after the save (the file hash alone does not
    catch that: whoever edits it can rewrite the sidecar) or whose sampler would resume elsewhere.
    Returns the checkpoint's config, parsed on the way."""
    stored = ckpt.get("config_sha256") or ""
    actual = hashlib.sha256(canonical_json(ckpt.get("config")).encode()).hexdigest()
    if actual != stored:
        raise CheckpointError(f"config edited: the checkpoint's config hashes to {actual[:12]}, not the "
                              f"{stored[:12] or '(none)'} it was saved with; refusing to resume under other settings")
    step, cfg = int(ckpt["step"]), PipelineConfig.from_dict(ckpt["config"])
    stored_pos, expected_pos = (ckpt.get("sampler") or {}).get("position"), batch_position(step, cfg)
    if stored_pos != expected_pos:
        raise CheckpointError(f"sampler position {stored_pos} in the checkpoint, but step {step} starts at batch "
                              f"{expected_pos}: a resumed run would read other batches than the original")
    return cfg


def restore(state: TrainState, ckpt: dict, rank: int = 0) -> TrainState:
    """Load every piece of ckpt into state (in place). RNG is restored for `rank` when the
    checkpoint holds that rank (same world size); otherwise the caller's seeding stands."""
    check_consistent(ckpt)
    return _load_into(state, ckpt, rank)


def _load_into(state: TrainState, ckpt: dict, rank: int) -> TrainState:
    if int(ckpt.get("n_classes", 0)) != state.n_classes:
        raise CheckpointError(f"checkpoint was built for {ckpt.get('n_classes', 0)} classes, this state for "
                              f"{state.n_classes}: the dataset's labels changed; train from scratch")
    unwrap(state.G).load_state_dict(ckpt["models"]["G"])
    unwrap(state.D).load_state_dict(ckpt["models"]["D"])
    state.G_ema.load_state_dict(ckpt["models"]["G_ema"])
    state.opt_g.load_state_dict(ckpt["optimizers"]["G"])
    state.opt_d.load_state_dict(ckpt["optimizers"]["D"])
    restore_scaler(state, ckpt["scaler"])
    state.step, state.images_seen = int(ckpt["step"]), int(ckpt["images_seen"])
    state.extra = dict(ckpt.get("extra", {}))
    if rank < len(ckpt["rng"]) and int(ckpt.get("world", 1)) == state.world:
        set_rng_state(ckpt["rng"][rank])
        ranks = ckpt.get("extra_ranks") or []
        if rank < len(ranks):  # this rank's own family state (image pools), not rank 0's
            state.extra = dict(ranks[rank])
    return state


def restore_scaler(state: TrainState, saved: dict) -> None:
    # a scale saved without a scaler to take it (or the reverse) would silently change the
    # loss scaling of the resumed run: refuse rather than drop or invent it
    mine = state.scaler.state_dict() if state.scaler is not None else {}
    if bool(mine) != bool(saved):
        raise CheckpointError(f"grad scaler mismatch: the checkpoint {'has' if saved else 'has no'} scaler state, "
                              f"this state {'has' if mine else 'has no'} enabled scaler")
    if saved:
        state.scaler.load_state_dict(saved)


def rebuild(ckpt: dict, device: torch.device | str = "cpu") -> tuple[PipelineConfig, TrainState]:
    """Config + a full TrainState from a checkpoint alone (nanoGPT's `model_args` idea)."""
    cfg = check_consistent(ckpt)  # before the config builds anything
    state = build_state(cfg, device, int(ckpt.get("n_classes", 0)))
    return cfg, _load_into(state, ckpt, rank=len(ckpt["rng"]))  # rank past the end: leave RNG alone


# ---- files -------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, ckpt: dict) -> str:
    """Atomically write ckpt to path and its sha256 sidecar; returns the sha256. Both files are
    written and fsynced before either is renamed, so a full disk (DiskFullError naming `path`)
    leaves the previous pair in place, matching, and no temporaries."""
    path = Path(path)
    data = torch_bytes(ckpt)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = {"format": FORMAT, "file": path.name, "sha256": digest, "step": ckpt["step"]}
    with room_for(path):
        write_files_atomic({sidecar_path(path): json_bytes(sidecar), path: data})
    return digest


def load_checkpoint(path: str | Path, verify: bool = True) -> dict:
    """Load a checkpoint without unpickling code; with verify, the sidecar hash must match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if verify:
        side = sidecar_path(path)
        if not side.is_file():
            raise CheckpointError(f"{side}: missing hash sidecar; refusing an unverified checkpoint")
        expected = json.loads(side.read_text())["sha256"]
        if file_sha256(path) != expected:
            raise CheckpointError(f"{path}: sha256 differs from {side.name} (torn write or tampering)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle payload or a torn zip both end here
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {e})") from e
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt != FORMAT:
        why = f": written by an older ganpipe ({OLD_FORMATS[fmt]}); retrain it" if fmt in OLD_FORMATS else ""
        raise CheckpointError(f"{path}: format {fmt!r} is not {FORMAT!r}{why}")
    try:  # here too, so a resume skips an edited checkpoint like a torn one
        check_consistent(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return ckpt


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")
