"""Federated training, the train stage's branch when `federated.enabled`: the server loop on the driver
and the clients as Ray actors.

Why Ray actors and not Flower: flwr 1.41 installs only by downgrading typer, fastapi, starlette, uvicorn,
rich, protobuf and packaging below what Prefect 3.8.8 and MLflow 3.17 are pinned with here, and
`flwr[simulation]` pins its own Ray (README: Federated training). Ray 2.60 is already the training engine.

Each round: the server sends the global weights (one object in Ray's store, shared by every client);
each client loads them, trains `local_steps` on its own shard, and returns its weights, metrics and
example count; the server averages them (gan_core.federated.fedavg, weighted by examples), logs the
round to MLflow and writes a normal checkpoint (gan_core.checkpoint) to the run's storage, so a rerun
resumes from the last round and evaluate / gate / register run unchanged on the final one.

Where the data is: a client maps the prepared dataset from disk itself and reads only its shard,
which it computes from the seed (gan_core.federated.shard_rows). The driver sends a path, a client
number and weights, and receives weights and numbers: it never reads images or labels (only the
manifest's class count). `tap` sees every message either way (tests/test_federated.py checks them).

Dropout: a client whose process dies (or that misses client_timeout_s) is dropped for the rest of the
run; a round averages its survivors and fails when fewer than min_clients remain. Resume restarts the
clients from the last checkpoint's averaged weights with fresh optimizers (their Adam moments are
client state and are not checkpointed).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flows.ops.drills import seam
from flows.stages.resume import CKPT_NAME, newest_valid
from gan_core.config import PipelineConfig
from gan_core.federated import fedavg, shard_rows, weighted_mean
from gan_core.state import Callback, TrainState

NETS = {"all": ("G", "D", "G_ema"), "generator": ("G", "G_ema"), "discriminator": ("D",)}
CLIENTS_DP = "federated_privacy"  # state.extra: client -> its DP accountant record
Tap = Callable[[str, int, object], None]  # (direction "to"|"from", client, message)


class FederationError(RuntimeError):
    """A federated round cannot go on (too few clients survived, a client failed on its own)."""


# ---- the client (runs inside a Ray actor process) ---------------------------------------------
class _RoundMetrics(Callback):
    """Keeps the loop's one log record of the round (log_every = local_steps: the round's average)."""

    def __init__(self):
        self.metrics: dict[str, float] = {}

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.metrics = dict(metrics)


class _KillAt(Callback):
    """GANPIPE_FAULT_CLIENT: SIGKILL this client's process at a step: a client lost mid-round."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, state: TrainState) -> None:
        if state.step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FederatedClient:
    """One data holder: its shard, its networks and optimizers, kept across rounds."""

    def __init__(self, spec: dict):
        from gan_core.batches import RowSubset, ShardedBatches
        from gan_core.data import load_prepared, training_arrays
        from gan_core.train import build_state

        self.cfg = cfg = PipelineConfig.from_dict(spec["pipeline"])
        self.client, self.fault, self.marker = spec["client"], spec.get("fault", ""), spec.get("fault_marker")
        torch.set_num_threads(spec["threads"])
        data = load_prepared(spec["data_dir"], mmap=True)  # verifies every file against the manifest
        if data.manifest["content_sha256"] != spec["data_sha256"]:
            raise FederationError(f"client {self.client}: {spec['data_dir']} is not dataset {spec['data_sha256'][:12]}")
        aligned, independent = training_arrays(data)
        f, seed = cfg.federated, cfg.train.seed
        rows = shard_rows(len(aligned["images"]), aligned.get("labels"), f, seed)[self.client]
        # the second domain of unpaired data has rows of its own: an iid share of those
        rows_b = (shard_rows(len(next(iter(independent.values()))), None, dataclasses.replace(f, split="iid"),
                             seed + 1)[self.client] if independent else None)
        # the shard stays in the memory-mapped files: a batch reads its rows (ShardedBatches), nothing else
        own = {k: RowSubset(a, rows) for k, a in aligned.items()}
        own_b = {k: RowSubset(a, rows_b) for k, a in independent.items()}
        self.examples = len(rows)
        self.classes = [int(c) for c in np.unique(aligned["labels"][rows])] if "labels" in aligned else []
        del data, aligned, independent  # the maps stay alive through `own`; no array of the whole set is held
        torch.manual_seed(seed)  # the same initial weights as the server's
        self.state = build_state(cfg, "cpu", spec["num_classes"])
        torch.manual_seed(seed * 1_000_003 + self.client + 1)  # a latent stream of its own
        if cfg.privacy.enabled:  # DP-SGD on this client's D, accounted over its own shard (q = batch / shard)
            from gan_core.privacy import KEY, make_private

            if spec.get("privacy"):  # a resumed run: the accountant continues this client's history
                self.state.extra[KEY] = spec["privacy"]
            make_private(self.state, cfg, self.examples)
        self.batches = ShardedBatches(own, cfg.train.batch_size, 0, 1, seed + self.client, own_b or None)

    def info(self) -> dict:
        return {"client": self.client, "examples": self.examples, "classes": self.classes}

    def run_round(self, msg: dict) -> dict:
        from gan_core.steps import unwrap
        from gan_core.train import batch_position, train

        s = self.state
        nets = {"G": unwrap(s.G), "D": unwrap(s.D), "G_ema": s.G_ema}
        for name, sd in msg["weights"].items():
            nets[name].load_state_dict(sd)
        s.step, seen = msg["start"], s.images_seen
        t = dataclasses.replace(self.cfg.train, steps=msg["end"], log_every=msg["end"] - msg["start"],
                                checkpoint_every=10**9)
        cfg = dataclasses.replace(self.cfg, train=t)
        metrics, callbacks = _RoundMetrics(), []
        if self._fault_fires(msg["round"]):
            callbacks.append(_KillAt(msg["start"] + max(1, (msg["end"] - msg["start"]) // 2)))
        train(s, self.batches.from_step(batch_position(s.step, cfg)), cfg, [metrics, *callbacks])
        return {"client": self.client, "round": msg["round"], "examples": self.examples,
                "images": s.images_seen - seen, "metrics": metrics.metrics, "privacy": s.extra.get("privacy"),
                "weights": {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in nets.items()}}

    def _fault_fires(self, rnd: int) -> bool:
        """GANPIPE_FAULT_CLIENT=ROUND:CLIENT (1-based round): once per run (a marker file disarms it)."""
        if not self.fault:
            return False
        r, _, c = self.fault.partition(":")
        if (int(r), int(c or 0)) != (rnd, self.client) or (self.marker and Path(self.marker).exists()):
            return False
        if self.marker:
            Path(self.marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.marker).write_text(f"round {rnd} client {self.client}")
        return True


# ---- the server (the driver) -------------------------------------------------------------------
@contextmanager
def ray_session(settings):
    import ray

    if ray.is_initialized():
        yield
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), logging_level="WARNING", include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def check_split(f, manifest: dict, data_dir: str) -> None:
    """What the clients would refuse, refused before any starts, from the manifest alone."""
    from gan_core.config import ConfigError

    classes = (manifest.get("labels") or {}).get("num_classes", 0)
    if f.split == "classes" and classes < 1:
        raise ConfigError("federated.split", f"classes needs a labelled dataset; {data_dir}/manifest.json has no "
                                             "labels (use iid)")
    if f.split == "classes" and f.classes_per_client > classes:
        raise ConfigError("federated.classes_per_client", f"the dataset has {classes} classes, got "
                                                          f"{f.classes_per_client}")
    if int(manifest["count"]) - int(manifest.get("heldout", 0)) < f.clients:
        raise ConfigError("federated.clients", f"{f.clients} clients need at least as many training images, "
                                               f"{data_dir} has {manifest['count']}")


def keep_privacy(state: TrainState, results: list[dict]) -> None:
    """With DP: every client's accountant record (a resumed client continues it) and, as the model's
    privacy record, the client with the largest epsilon: the guarantee is per client's shard, and the
    averaged model is post-processing of the clients' DP updates."""
    recs = {str(r["client"]): r["privacy"] for r in results if r.get("privacy")}
    if not recs:
        return
    state.extra[CLIENTS_DP] = {**state.extra.get(CLIENTS_DP, {}), **recs}
    state.extra["privacy"] = max(state.extra[CLIENTS_DP].values(), key=lambda r: r["epsilon"])


def start_clients(cfg: PipelineConfig, spec: dict, tap: Tap | None, privacy: dict) -> dict[int, object]:
    import ray

    f = cfg.federated
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor = ray.remote(FederatedClient).options(num_cpus=cpus / f.clients, max_restarts=0, max_concurrency=1)
    clients = {}
    for k in range(f.clients):
        msg = {**spec, "client": k, "threads": max(1, cpus // f.clients), "privacy": privacy.get(str(k))}
        if tap:
            tap("to", k, msg)
        clients[k] = actor.remote(msg)
    return clients


def global_weights(state: TrainState, names: tuple[str, ...]) -> dict:
    from gan_core.steps import unwrap

    nets = {"G": unwrap(state.G), "D": unwrap(state.D), "G_ema": state.G_ema}
    return {n: nets[n].state_dict() for n in names}


def run_round(clients: dict, rnd: int, start: int, end: int, weights: dict[int, dict], timeout_s: float,
              tap: Tap | None, log) -> list[dict]:
    """One round on every live client (client k starts from weights[k]); returns the survivors'
    results and removes the lost clients from `clients`."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    msgs = {k: {"round": rnd, "start": start, "end": end, "weights": weights[k]} for k in clients}
    refs: dict[int, object] = {}  # one object per distinct message, read by every client it goes to
    pending = {}
    for k, msg in msgs.items():
        if id(weights[k]) not in refs:
            refs[id(weights[k])] = ray.put(msg)
        ref = refs[id(weights[k])]
        pending[clients[k].run_round.remote(ref)] = k
        if tap:
            tap("to", k, msg)
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    results = []
    for fut in late:
        k = pending[fut]
        log(f"round {rnd}: client {k} did not answer within {timeout_s:g} s (federated.client_timeout_s): dropped")
        ray.kill(clients.pop(k))
    for fut in ready:
        k = pending[fut]
        try:
            res = ray.get(fut)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
            log(f"round {rnd}: client {k} lost ({type(e).__name__}): dropped")
            clients.pop(k, None)
            continue
        except Exception as e:
            raise FederationError(f"round {rnd}: client {k} failed: {e}") from e
        if tap:
            tap("from", k, res)
        results.append(res)
    return sorted(results, key=lambda r: r["client"])


def aggregate(state: TrainState, results: list[dict]) -> None:
    """The server's copy of every network becomes the example-weighted average of the survivors'."""
    from gan_core.steps import unwrap

    n = [r["examples"] for r in results]
    nets = {"G": unwrap(state.G), "D": unwrap(state.D), "G_ema": state.G_ema}
    for name, net in nets.items():
        net.load_state_dict(fedavg([r["weights"][name] for r in results], n))


def write_round(fs, run_path: str, state: TrainState, cfg: PipelineConfig, meta: dict) -> str:
    """A normal checkpoint of the averaged networks, in its own folder of the run's storage."""
    import pyarrow.fs

    from gan_core.checkpoint import rng_state, save_checkpoint, to_checkpoint

    dest = f"{run_path}/checkpoint_{state.step:09d}"
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(Path(d) / CKPT_NAME, to_checkpoint(state, cfg, [rng_state()], meta))
        fs.create_dir(dest, recursive=True)
        pyarrow.fs.copy_files(d, dest, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    return dest


def server_state(cfg: PipelineConfig, point, num_classes: int) -> TrainState:
    from gan_core.checkpoint import restore
    from gan_core.train import build_state

    torch.manual_seed(cfg.train.seed)  # the clients build theirs from the same seed: equal initial weights
    state = build_state(cfg, "cpu", num_classes)
    if point.checkpoint is not None:
        restore(state, point.checkpoint)
    return state


def run_federated(settings, cfg: PipelineConfig, data_dir: str, run_name: str, mlflow_run_id: str | None,
                  meta: dict, tap: Tap | None = None) -> dict:
    """Federated rounds on Ray actors, then the final checkpoint as the candidate (train.py's contract)."""
    import pyarrow.fs
    import ray

    from flows.stages.train import publish_candidate, run_storage
    from gan_core.checkpoint import load_checkpoint
    from gan_core.data import load_manifest

    f, manifest = cfg.federated, load_manifest(data_dir)
    check_split(f, manifest, data_dir)
    storage_path, storage_fs = run_storage(settings.ray_storage)
    fs = storage_fs or pyarrow.fs.LocalFileSystem()
    run_path = f"{storage_path.rstrip('/')}/{run_name}"
    point = newest_valid(fs, run_path)
    state = server_state(cfg, point, int((manifest.get("labels") or {}).get("num_classes", 0)))
    log = print
    if point.checkpoint is not None:
        log(f"federated: resuming {run_name} at step {state.step} (round {state.step // f.local_steps})")
    mlflow = _MlflowRounds(settings, mlflow_run_id)
    with ray_session(settings):
        clients: dict = {}
        try:
            if state.step < cfg.train.steps:
                spec = {"pipeline": cfg.to_dict(), "data_dir": data_dir, "data_sha256": manifest["content_sha256"],
                        "num_classes": state.n_classes, "fault": seam("GANPIPE_FAULT_CLIENT"),
                        "fault_marker": str(settings.home / "faults" / f"{run_name}.client.fired")}
                clients = start_clients(cfg, spec, tap, state.extra.get(CLIENTS_DP, {}))
                infos = ray.get([c.info.remote() for c in clients.values()])
                mlflow.start(f, infos)
            synced: set[int] = set()  # clients that hold every network already (after their first round)
            while state.step < cfg.train.steps:
                rnd, start = state.step // f.local_steps + 1, state.step
                full = global_weights(state, NETS["all"])
                part = {n: full[n] for n in NETS[f.aggregate]}
                alive = len(clients)
                # a client's first round of this run starts from every network; later ones from the averaged subset
                weights = {k: part if k in synced else full for k in clients}
                results = run_round(clients, rnd, start, start + f.local_steps, weights, f.client_timeout_s, tap, log)
                synced |= set(clients)
                if len(results) < f.min_clients:
                    raise FederationError(f"round {rnd}/{f.rounds}: {len(results)} of {alive} clients survived, "
                                          f"fewer than federated.min_clients={f.min_clients}; the last checkpoint "
                                          f"(step {start}) is kept: rerun to resume from it")
                aggregate(state, results)
                state.step = start + f.local_steps
                state.images_seen += sum(r["images"] for r in results)
                keep_privacy(state, results)
                mlflow.round(state, rnd, alive, results)
                write_round(fs, run_path, state, cfg, meta)
        finally:
            for c in clients.values():
                ray.kill(c)
    final = newest_valid(fs, run_path)
    if final.checkpoint is None or int(final.checkpoint["step"]) != cfg.train.steps:
        raise FederationError(f"federated run {run_name!r}: no valid checkpoint at step {cfg.train.steps}")
    with ray_files(fs, final.path) as d:
        ckpt_file = Path(d) / CKPT_NAME
        return publish_candidate(settings, ckpt_file, load_checkpoint(ckpt_file), run_name, mlflow_run_id, run_path)


@contextmanager
def ray_files(fs, path: str):
    """A storage folder as a local directory (copied down when remote)."""
    import pyarrow.fs

    with tempfile.TemporaryDirectory() as d:
        pyarrow.fs.copy_files(path, d, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield d


class _MlflowRounds:
    """Rounds, clients, survivors and the survivors' example-weighted losses, per round, on the run."""

    def __init__(self, settings, run_id: str | None):
        from flows.registry.tracking import client

        self.run_id = run_id
        self.c = client(settings.mlflow_uri) if run_id else None

    def start(self, f, infos: list[dict]) -> None:
        if self.c is None:
            return
        tags = {"federated.clients": str(f.clients), "federated.rounds": str(f.rounds),
                "federated.local_steps": str(f.local_steps), "federated.split": f.split,
                "federated.aggregate": f.aggregate, "federated.min_clients": str(f.min_clients),
                "federated.engine": "ray-actors",
                "federated.shards": "; ".join(f"client {i['client']}: {i['examples']} rows"
                                              + (f", classes {i['classes']}" if f.split == "classes" else "")
                                              for i in infos)}
        for k, v in tags.items():
            self.c.set_tag(self.run_id, k, v)

    def round(self, state: TrainState, rnd: int, alive: int, results: list[dict]) -> None:
        if self.c is None:
            return
        import time

        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), state.step
        values = {f"train/{k}": v for k, v in
                  weighted_mean([r["metrics"] for r in results], [r["examples"] for r in results]).items()}
        values.update({"federated/round": rnd, "federated/clients": alive, "federated/survivors": len(results),
                       "federated/examples": sum(r["examples"] for r in results),
                       "train/images_seen": state.images_seen})
        self.c.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
