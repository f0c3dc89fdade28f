"""MLflow helpers: experiments, runs, the metric-streaming callback and registry access."""
from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gan_core.config import PipelineConfig
from gan_core.train import Callback, TrainState

CHAMPION = "champion"


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def model_name(cfg: PipelineConfig) -> str:
    """One registered model per dataset and architecture: versions of it compete for `champion`."""
    return f"{cfg.register.model_prefix}-{cfg.data.dataset}-{cfg.model.arch}"


def experiment_id(c: MlflowClient, name: str, artifact_root: str | None) -> str:
    """Get or create; with a local database the artifacts go under GANPIPE_HOME, not ./mlruns."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = f"{artifact_root.rstrip('/')}/{name}" if artifact_root else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another run
        return c.get_experiment_by_name(name).experiment_id


def flat_params(cfg: PipelineConfig) -> dict[str, str]:
    return {f"{sec}.{k}": str(v) for sec, fields in cfg.to_dict().items() for k, v in fields.items()}


def start_run(c: MlflowClient, exp_id: str, run_name: str, cfg: PipelineConfig, tags: dict[str, str]) -> str:
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    params = flat_params(cfg)
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    return run.info.run_id


def log_metrics(c: MlflowClient, run_id: str, metrics: dict[str, float], step: int, prefix: str = "") -> None:
    """One batch of metrics at one step (MLflow keys them by step, so curves line up across runs)."""
    ts = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(prefix + k, float(v), ts, step) for k, v in metrics.items()],
                synchronous=True)


def last_logged_step(c: MlflowClient, run_id: str) -> int:
    """The last step of the run's training curve (0 if none): what a resumed run must not log again."""
    return max((m.step for m in c.get_metric_history(run_id, "train/images_seen")), default=0)


class MlflowMetrics(Callback):
    """Streams the loop's averaged metrics to an MLflow run, keyed by step (rank 0 only), skipping
    steps at or below `floor` (already logged before a restart)."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "train/", floor: int = 0):
        self.client, self.run_id, self.prefix, self.floor = client(tracking_uri), run_id, prefix, floor

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.step <= self.floor:
            return
        log_metrics(self.client, self.run_id, {**metrics, "images_seen": state.images_seen}, state.step, self.prefix)


def champion_version(c: MlflowClient, name: str):
    """The model version holding the champion alias, or None (no model or no alias yet)."""
    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def mlflow_monitor(cfg: PipelineConfig, data_dir, manifest: dict, tracking_uri: str, run_id: str, floor: int = 0):
    """The cheap in-training evaluation, streaming `monitor/<metric>_<n>` curves to the MLflow run.
    Uses the domain classifier (fast on CPU); None when it is off or the dataset has no such stats."""
    from gan_core.metrics.evaluator import DOMAIN, load_evaluator
    from gan_core.metrics.monitor import FIDMonitor

    if cfg.eval.every == 0 or not (data_dir / "ref_stats" / DOMAIN / "stats.json").is_file():
        return None
    c = client(tracking_uri)

    def sink(step, metrics, fingerprint):
        if step > floor:
            log_metrics(c, run_id, metrics, step, prefix="monitor/")

    def on_error(step, error):
        c.set_tag(run_id, "monitor.error", f"step {step}: {type(error).__name__}: {error}")

    def grid_sink(step, grid):  # MLflow's UI shows these with a step slider, side by side across runs
        if step > floor:
            c.log_image(run_id, grid, key="samples", step=step)

    evaluator = load_evaluator(data_dir, manifest, DOMAIN)
    return FIDMonitor(evaluator, cfg.eval.every, cfg.eval.n_cheap, cfg.eval.seed, sink, on_error,
                      grid_sink=grid_sink)


SAME_INPUTS = ("dataset.content_sha256", "params.sha256", "git.commit")


def trained_from_same_inputs(c: MlflowClient, name: str, inputs: dict[str, str]):
    """(version, is_champion) of a version trained on this dataset content, params hash and code
    (champion first), or None. Training is deterministic, so such inputs would give that model again."""
    champ = champion_version(c, name)
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if all(v.tags.get(k) == inputs[k] for k in SAME_INPUTS)]
    if champ is not None and any(v.version == champ.version for v in same):
        return champ, True
    latest = max(same, key=lambda v: int(v.version), default=None)
    return (latest, False) if latest is not None else None
