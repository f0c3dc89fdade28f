"""Stage 4, register: log G_ema to MLflow as a torch.export (pt2) model, register a version with
lineage tags, and move the `champion` alias only when the gate says so.

Registration is idempotent per training run: a version already registered for the same MLflow run
and checkpoint sha256 is returned as it is (a retried stage logs nothing again). Promotion
(`promote`) re-reads the champion and moves the alias under a lock, so concurrent promoters cannot
lose an update."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch

from flows.data import versioning
from flows.stages.evaluate import json_safe
from flows.registry import history
from flows.registry.gate import Scored, decide, decision_label, fid_from_record, recorded_decision, same_registration
from flows.registry.gate import epsilon_budget, privacy_refusal
from flows.ops.locks import file_lock, server_lock
from flows.stages.encoding import log_encoder
from flows.stages.records import read_record, write_record
from flows.ops.settings import Settings, without_password
from flows.registry.tracking import CHAMPION, champion_version, client, model_name
from gan_core.checkpoint import load_checkpoint, rebuild
from gan_core.config import PipelineConfig
from gan_core.models import family_for


log = logging.getLogger(__name__)

# Test/drill seam, owned by this module: GANPIPE_FAULT_PROMOTE_DELAY=<seconds> sleeps inside the
# promotion's critical section, after the champion is read and before the alias moves, to widen the
# window a lost update needs (tests/test_faults_registry.py). Never set it in production.
PROMOTE_DELAY_ENV = "GANPIPE_FAULT_PROMOTE_DELAY"


def _scored(version) -> Scored | None:
    if version is None:
        return None
    t = version.tags  # eval.value since gates other than FID; versions registered before have eval.fid only
    return Scored(fid_from_record(t.get("eval.value", t.get("eval.fid"))), t.get("eval.fingerprint_id", "missing"),
                  str(version.version), higher_is_better=t.get("eval.higher_is_better") == "true",
                  metric=t.get("eval.metric", "FID"))


def promote_lock_path(settings: Settings, name: str) -> Path:
    return settings.home / "locks" / f"promote-{name}.lock"


def _fault_delay() -> None:
    from flows.ops.drills import seam

    raw = seam(PROMOTE_DELAY_ENV)  # a no-op unless GANPIPE_DRILLS=1
    if not raw:
        return
    try:
        seconds = float(raw)
    except ValueError as e:
        raise ValueError(f"{PROMOTE_DELAY_ENV}={raw!r}: expected seconds") from e
    time.sleep(max(0.0, seconds))


def promotion_lock(name: str, lock_path: Path, holder: str, on_wait):
    """The lock every promoter of `name` shares: the Prefect server's when there is one (promoters on
    other machines, with other GANPIPE_HOMEs, use the same server), else this machine's flock file."""
    if os.environ.get("PREFECT_API_URL"):
        return server_lock(f"ganpipe-promote-{name}", on_wait)
    return file_lock(lock_path, holder, on_wait)


def promote(c, name: str, version: str, candidate: Scored, margin: float, lock_path: Path,
            allow_non_private: bool = False) -> tuple[bool, str]:
    """Gate one registered version against the current champion and move the alias if it wins;
    tags the version with the decision and its reason. Returns (promoted, reason).

    Read-decide-write happens under an exclusive lock, and the champion is re-read inside it, so two
    promoters cannot both decide against the same old champion (the later write would otherwise
    replace a better model: a lost update). With a Prefect server (PREFECT_API_URL) the lock is its
    global concurrency limit `ganpipe-promote-<name>`, which every machine using that server shares;
    embedded (no server), it is a flock file in GANPIPE_HOME, which serialises this machine only."""
    version = str(version)
    candidate = dataclasses.replace(candidate, version=version)
    holder = f"pid {os.getpid()} on {socket.gethostname()}: {name} v{version}"
    def on_wait(who: str) -> None:
        log.info("promotion of %s v%s waits for the lock held by %s", name, version, who)

    with promotion_lock(name, Path(lock_path), holder, on_wait):
        champion = champion_version(c, name)  # re-read under the lock: never a value read before waiting
        _fault_delay()
        promoted, reason = decide(candidate, _scored(champion), margin)
        label = decision_label(candidate, promoted)
        # privacy (tags privacy.*): over the GANPIPE_MAX_EPSILON budget, or non-DP over a DP champion
        held = privacy_refusal(dict(c.get_model_version(name, version).tags), champion and dict(champion.tags),
                               epsilon_budget(os.environ), allow_non_private)
        if promoted and held is not None and not (champion is not None and str(champion.version) == version):
            promoted, reason, label = False, held[0], "not promoted" if held[1] else "refused"
        if promoted and (champion is None or str(champion.version) != version):
            c.set_registered_model_alias(name, CHAMPION, version)
            history.append(c, name, history.Move(version, history.now_utc(), history.AUTOMATIC, reason,
                                                 champion and str(champion.version)))  # under the lock
            if champion is not None:  # its own promotion tags stay as decided then; this says what replaced it
                c.set_model_version_tag(name, champion.version, "promotion.superseded_by",
                                        f"v{version} ({candidate.metric} {candidate.value:.4f})")
        c.set_model_version_tag(name, version, "promotion.decision", label)
        c.set_model_version_tag(name, version, "promotion.reason", reason)
    return promoted, reason


def registered_version(c, name: str, run_id: str, checkpoint_sha256: str):
    """The version already registered for this training run and checkpoint, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    found = same_registration(((str(v.version), v.tags) for v in versions), run_id, checkpoint_sha256)
    return None if found is None else c.get_model_version(name, found)


def lineage_tags(settings: Settings, cfg: PipelineConfig, training: dict, evaluation: dict, lineage: dict) -> dict:
    meta = training["meta"]
    tags = {
        "dataset.name": cfg.data.dataset,
        "dataset.version": str(meta.get("dataset_version", "unversioned")),
        "dataset.content_sha256": meta["dataset_sha256"],
        "dataset.dvc_md5": str(versioning.locked_out_md5(settings, "prepare", settings.prepared_dir(cfg.data.name))),
        "params.sha256": meta["params_sha256"],
        "git.commit": meta["git_commit"],
        "checkpoint.sha256": training["checkpoint_sha256"],
        "checkpoint.dvc_md5": str(versioning.locked_out_md5(settings, "train", settings.candidate_dir)),
        "checkpoint.step": str(training["step"]),
        "train.determinism": str(meta.get("determinism", "unrecorded")),
        "ray.run_name": training["run_name"],
        "prefect.flow_run_id": lineage.get("prefect.flow_run_id", "none"),
        "mlflow.run_id": str(training.get("mlflow_run_id")),
        "model.arch": cfg.model.arch,
        "model.loss": cfg.model.loss,
        "eval.metric": evaluation["metric"],
        "eval.value": repr(gate_value(evaluation)),
        "eval.higher_is_better": "true" if evaluation.get("higher_is_better") else "false",
        "eval.fingerprint_id": evaluation["fingerprint"]["id"],
        "eval.fingerprint": json.dumps(evaluation["fingerprint"], sort_keys=True),
    }
    if "fid" in evaluation:  # FID-gated families keep the tag older readers look for
        tags["eval.fid"] = repr(gate_value(evaluation))
    if evaluation.get("error"):
        tags["eval.error"] = str(evaluation["error"])
    return tags


def privacy_tags(cfg: PipelineConfig, extra: dict) -> dict[str, str]:
    """The privacy.* figures of a DP checkpoint ({} without privacy). A config with privacy on whose
    checkpoint has no accountant record was not trained with DP-SGD: refuse to register it as DP."""
    from gan_core.privacy import KEY, summary

    if KEY in extra:
        return summary(extra[KEY])
    if cfg.privacy.enabled:
        raise ValueError("privacy.enabled but the checkpoint holds no privacy record (extra['privacy']): "
                         "it was not trained with DP-SGD; refusing to register it")
    return {}


def gate_value(evaluation: dict) -> float:
    """The gate metric of an evaluation record (`value`; `fid` in records written before)."""
    return fid_from_record(evaluation.get("value", evaluation.get("fid")))


def generator_signature(inputs: list[tuple[str, np.ndarray, tuple]], out: np.ndarray):
    """Tensor signature from (name, example, shape with -1 for dynamic dims) per input; the output's
    batch (and, for image inputs, height and width) are dynamic too."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    specs = [TensorSpec(example.dtype, shape, name) for name, example, shape in inputs]
    out_shape = (-1, out.shape[1], -1, -1) if len(inputs[0][2]) == 4 else (-1, *out.shape[1:])
    return ModelSignature(Schema(specs), Schema([TensorSpec(np.dtype(np.float32), out_shape, "images")]))


def export_inputs(cfg: PipelineConfig, module) -> tuple[list[tuple[str, np.ndarray, tuple]], dict]:
    """What the exported program takes, as the family declares it, and the metadata that says so
    (an exported program has no attributes): latents (z, then y for a conditional G) for noise
    families, or what the module itself declares (`export_inputs(n)`, `export_meta()`: StyleGAN's
    psi and mixing); an image batch in [-1, 1] with dynamic height and width, plus the direction
    (0, 1, ...) where a family translates several ways, for image-conditioned ones."""
    family = family_for(cfg.model)
    if hasattr(module, "export_inputs"):  # a module that takes more than latents (StyleGAN's psi, mixing)
        return module.export_inputs(8), {"arch": family.name, "latent": module.latent.to_dict(),
                                         **module.export_meta()}
    if not family.image_input:
        spec = module.latent
        example = spec.sample(8, generator=torch.Generator().manual_seed(0))
        inputs = [("z", example.z.numpy(), (-1, spec.input_dim))]
        if spec.conditional:
            inputs.append(("y", example.y.numpy(), (-1,)))
        return inputs, {"arch": family.name, "latent": spec.to_dict()}
    d = cfg.data
    real = torch.rand(8, d.channels, d.resolution, d.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x, _ = family.heldout(real, real.clone(), cfg.family)
    inputs = [("images", x.numpy(), (-1, d.channels, -1, -1))]
    if family.directions:
        inputs.append(("direction", (torch.arange(8) % len(family.directions)).numpy(), (-1,)))
    meta = {"arch": family.name, "input": {"channels": d.channels, "resolution": int(x.shape[-1])},
            "directions": list(family.directions),
            "options": dataclasses.asdict(cfg.family) if cfg.family is not None else {}}
    return inputs, meta


def export_context(cfg: PipelineConfig):
    """Around torch.export of an image-conditioned generator: size-oblivious reasoning about sizes,
    without which a U-Net whose bottleneck is 1x1 at the example size is specialised to that size
    (measured with torch 2.13: a 16 px example exported a 16-px-only program; with it, one that
    takes any multiple of the network's stride). Noise families export as before."""
    import contextlib

    if not family_for(cfg.model).image_input:
        return contextlib.nullcontext()
    from torch.fx.experimental import _config as fx_config

    return fx_config.patch(backed_size_oblivious=True)


def exported(state) -> torch.nn.Module:
    """What the family exports (CycleGAN: both directions), with every net in the default (NCHW) layout,
    whatever train.channels_last was. Traced with NHWC weights, torch.export specialises the sizes that
    the strides depend on, and a translator trained at 16 px then refuses 32 px inputs."""
    for net in (state.G, state.D, state.G_ema):
        net.to(memory_format=torch.contiguous_format)
    return state.family.infer(state.G_ema.eval())


def export_args(cfg: PipelineConfig, module) -> dict:
    """How a generator is saved to MLflow: a torch.export (pt2) program, which loads without
    unpickling code, with dynamic batch (MLflow marks the signature's -1 dims dynamic; it needs an
    example batch > 1) and the family's inputs as metadata."""
    inputs, meta = export_inputs(cfg, module)
    with torch.no_grad():
        out = module(*(torch.from_numpy(example) for _, example, _ in inputs)).numpy()
    return {"input_example": tuple(example for _, example, _ in inputs),
            "signature": generator_signature(inputs, out), "serialization_format": "pt2", "metadata": meta,
            "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}


def _register_once(settings: Settings, cfg: PipelineConfig, lineage: dict) -> dict:
    import mlflow

    training = read_record(settings.candidate_dir / "train.json", "train")
    evaluation = read_record(settings.reports_dir / "evaluation.json", "evaluate")
    if evaluation["checkpoint_sha256"] != training["checkpoint_sha256"]:
        raise ValueError(f"{settings.reports_dir / 'evaluation.json'}: evaluates checkpoint "
                         f"{evaluation['checkpoint_sha256'][:12]}, not the candidate "
                         f"{training['checkpoint_sha256'][:12]}; re-run evaluate")
    run_id = training.get("mlflow_run_id")
    name = model_name(cfg)
    c = client(settings.mlflow_uri)
    value = gate_value(evaluation)  # null in the record: not finite
    candidate = Scored(value, evaluation["fingerprint"]["id"], error=str(evaluation.get("error") or ""),
                       higher_is_better=bool(evaluation.get("higher_is_better")), metric=evaluation["metric"])

    existing = registered_version(c, name, str(run_id), training["checkpoint_sha256"])
    if existing is None:
        mlflow.set_tracking_uri(settings.mlflow_uri)
        _, state = rebuild(load_checkpoint(settings.candidate_dir / "checkpoint.pt"))
        G = exported(state)
        with mlflow.start_run(run_id=run_id), export_context(cfg):
            info = mlflow.pytorch.log_model(G, name="generator", **export_args(cfg, G))
            encoder = log_encoder(cfg, state)  # families that also encode images (aae): tagged on the version
            mlflow.log_artifact(str(settings.candidate_dir / "checkpoint.pt"), "checkpoint")
        tags = lineage_tags(settings, cfg, training, evaluation, lineage)
        tags.update({f"family.{k}": str(state.extra[k]) for k in state.family.lineage if k in state.extra})
        tags.update(privacy_tags(cfg, state.extra))
        tags.update(encoder)
        version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
        recorded = None
    else:
        version = str(existing.version)
        recorded = recorded_decision(existing.tags)

    if recorded is None:  # a new version, or one whose promotion never completed (a crash in between)
        promoted, reason = promote(c, name, version, candidate, cfg.register.promotion_margin,
                                   promote_lock_path(settings, name), cfg.privacy.allow_non_private)
    else:
        champion = champion_version(c, name)
        promoted = champion is not None and str(champion.version) == version
        reason = f"already registered as v{version} for this training run and checkpoint: {recorded}"
    result = {"model_name": name, "version": version, "champion": promoted, "reason": reason,
              "model_uri": f"models:/{name}/{version}", "metric": evaluation["metric"],
              "value": value, "higher_is_better": candidate.higher_is_better, "mlflow_run_id": run_id}
    if "fid" in evaluation:
        result["fid"] = value
    if evaluation.get("error"):
        result["error"] = evaluation["error"]
    write_record(settings.reports_dir / "registration.json", json_safe(result))
    return result


REGISTER_ATTEMPTS = 4  # with 1-2, 2-4, 4-8 s between them: an unreachable server fails within ~20 s


class RegistryUnavailable(RuntimeError):
    """The MLflow server did not answer within the registration's retry bound; nothing was lost."""


def register(settings: Settings, cfg: PipelineConfig, lineage: dict) -> dict:
    """Register the candidate, retrying while the MLflow server is unreachable or failing (each try
    first asks its /health, so a dead server costs milliseconds, not MLflow's minutes of retries).
    A try is safe to repeat: a version already registered for this run and checkpoint is reused.
    Then it fails with RegistryUnavailable saying where the checkpoint is kept."""
    from flows.ops.retry import RetriesExhausted, retry
    from flows.registry.tracking import check_reachable, transient

    def once() -> dict:
        check_reachable(settings.mlflow_uri)
        return _register_once(settings, cfg, lineage)

    try:
        return retry(once, f"registering {model_name(cfg)} at MLflow {without_password(settings.mlflow_uri)}",
                     attempts=REGISTER_ATTEMPTS, base_delay=2.0, max_delay=8.0, retry_on=transient)
    except RetriesExhausted as e:
        training = read_record(settings.candidate_dir / "train.json", "train")
        raise RegistryUnavailable(
            f"{e}. Nothing is lost: the candidate checkpoint stays in {settings.candidate_dir / 'checkpoint.pt'} "
            f"(sha256 {training['checkpoint_sha256'][:12]}) and in Ray's run storage "
            f"({training.get('ray_result_path')}); run `ganpipe stage register` (or trigger the run again) "
            f"once the server answers") from e
