"""MLflow helpers: experiments, runs, the metric-streaming callback and registry access."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gan_core.config import PipelineConfig
from gan_core.state import Callback, TrainState

CHAMPION = "champion"
log = logging.getLogger(__name__)


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


MAX_PENDING = 10_000  # entries (one per logged step) kept while MLflow is away: a few MB; the oldest go first
FLUSH_TIMEOUT_S = 60.0  # how long the end of training waits for an unreachable server before dropping
CHECKPOINT_FLUSH_S = 10.0  # how long a checkpoint waits for a slow (answering) server to take the metrics
PROBE_TIMEOUT_S = 2.0  # GET /health before each send: a dead server is noticed in ms, not minutes
MAX_RETRY_DELAY_S = 10.0  # between probes while the server is away: it is back within this when it returns
MAX_BATCH = 1000  # metric values per log_batch (MLflow's limit)


class MetricStream:
    """Sends one MLflow run's metric values (and the monitor's tags and sample grids) from a
    background thread, in order, so the training loop never waits on MLflow.

    Why a thread: MLflow's client retries a request for about 4 minutes before it fails (measured:
    247 s for one log_batch to a closed port); on rank 0's loop that would stall every rank at the
    next collective. While the server is unreachable (its /health does not answer) entries wait in
    memory and go out in order once it answers again; beyond `max_pending` the oldest are dropped.
    `close` waits up to `flush_timeout_s`; whatever is still unsent is dropped. Dropped metric
    values are counted (`dropped`) and logged as a warning. Never raises into the caller."""

    def __init__(self, tracking_uri: str, run_id: str, max_pending: int = MAX_PENDING,
                 flush_timeout_s: float = FLUSH_TIMEOUT_S):
        self.client, self.uri, self.run_id = client(tracking_uri), tracking_uri, run_id
        self.max_pending, self.flush_timeout_s = max_pending, flush_timeout_s
        self.pending: deque = deque()  # ("metrics", [Metric]) | ("tag", key, value) | ("image", grid, key, step)
        self.sent = self.dropped = 0  # metric values
        self.outages = 0  # times the server went away during the run
        self.cond = threading.Condition()
        self.closing = self.abandoned = False
        self.down = False  # the last attempt found the server unreachable (flush does not wait then)
        self._in_flight: list = []  # taken from `pending` by the thread, not yet confirmed sent
        self.thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self.thread.start()

    # ---- the loop's side: never blocks, never raises ------------------------------------------
    def metrics(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        ts = int(time.time() * 1000)
        self._put(("metrics", [Metric(prefix + k, float(v), ts, step) for k, v in values.items()]))

    def tag(self, key: str, value: str) -> None:
        self._put(("tag", key, value))

    def image(self, grid, key: str, step: int) -> None:
        self._put(("image", grid, key, step))

    def _put(self, entry: tuple) -> None:
        with self.cond:
            if self.closing:
                self._drop([entry], "the stream is closed")
                return
            if len(self.pending) >= self.max_pending:
                self._drop([self.pending.popleft()], f"more than {self.max_pending} entries waiting")
            self.pending.append(entry)
            self.cond.notify_all()  # the sender thread (a flush may wait on the same condition)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything put so far is sent, for at most timeout_s, and not at all while the
        server is known to be unreachable (training must not wait on it). True if all was sent.
        A checkpoint calls this before it is reported: a worker killed right after the report would
        otherwise take the metrics up to that step with it, and the resumed run starts after them."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while (self.pending or self._in_flight) and not self.down and not self.abandoned:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return not (self.pending or self._in_flight)

    def close(self) -> int:
        """Send what is left (up to flush_timeout_s), stop, and return how many values were dropped."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join(self.flush_timeout_s)
        with self.cond:
            if self.thread.is_alive():  # the server did not come back in time
                self.abandoned = True
                self._drop(list(self.pending) + self._in_flight, "MLflow unreachable at the end "
                           f"of training (waited {self.flush_timeout_s:.0f} s)")
                self.pending.clear()
        if self.dropped:
            log.warning("%d metric values for MLflow run %s were not logged (%s); see earlier warnings",
                        self.dropped, self.run_id, self.uri)
        return self.dropped

    def _drop(self, entries: list, why: str) -> None:
        n = sum(len(e[1]) for e in entries if e[0] == "metrics")
        self.dropped += n
        steps = [m.step for e in entries if e[0] == "metrics" for m in e[1]]
        log.warning("dropping %d metric values%s for MLflow run %s: %s", n,
                    f" (steps {min(steps)}-{max(steps)})" if steps else "", self.run_id, why)

    # ---- the thread's side --------------------------------------------------------------------
    def _run(self) -> None:
        delay, down_since = 0.5, None
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending or self.abandoned:
                    return
                self._in_flight = batch = self._take()
            try:
                check_reachable(self.uri)
                self._send(batch)
            except Exception as e:
                if _permanent(e):  # a request MLflow refuses would be refused again
                    with self.cond:
                        self._drop(batch, f"refused: {_first_line(e)}")
                        self._in_flight = []
                    continue
                with self.cond:
                    if self.abandoned:
                        return
                    self.pending.extendleft(reversed(batch))
                    self._in_flight = []
                    self.down = True
                    self.cond.notify_all()  # a flush waiting on this batch stops waiting
                    if down_since is None:
                        down_since, self.outages = time.monotonic(), self.outages + 1
                        log.warning("MLflow at %s unreachable (%s); training goes on, metrics wait in memory "
                                    "(up to %d steps) and are sent when it answers again", self.uri,
                                    _first_line(e), self.max_pending)
                    self.cond.wait(delay)  # close() may wake it early: it then tries again at once
                delay = min(2 * delay, MAX_RETRY_DELAY_S)
                continue
            with self.cond:
                self._in_flight = []
                self.down = False
                if not self.abandoned:
                    self.sent += sum(len(e[1]) for e in batch if e[0] == "metrics")
                self.cond.notify_all()  # wakes flush()
            if down_since is not None:
                log.warning("MLflow at %s answers again after %.0f s; the waiting metrics were sent", self.uri,
                            time.monotonic() - down_since)
            delay, down_since = 0.5, None

    def _take(self) -> list:
        """The next entries to send (popped; put back on failure): a run of metric entries up to
        MAX_BATCH values, or one tag or image."""
        batch = [self.pending.popleft()]
        if batch[0][0] != "metrics":
            return batch
        n = len(batch[0][1])
        while self.pending and self.pending[0][0] == "metrics" and n + len(self.pending[0][1]) <= MAX_BATCH:
            n += len(self.pending[0][1])
            batch.append(self.pending.popleft())
        return batch

    def _send(self, batch: list) -> None:
        kind = batch[0][0]
        if kind == "metrics":
            self.client.log_batch(self.run_id, metrics=[m for e in batch for m in e[1]], synchronous=True)
        elif kind == "tag":
            self.client.set_tag(self.run_id, batch[0][1], batch[0][2])
        else:
            _, grid, key, step = batch[0]
            self.client.log_image(self.run_id, grid, key=key, step=step)


def check_reachable(tracking_uri: str) -> None:
    """Raise unless an MLflow server at tracking_uri answers GET /health within PROBE_TIMEOUT_S
    (MLflow's own client would retry a dead server for minutes). No-op for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    # any answer below 500 (even 401 from an auth proxy) means something is serving
    r = requests.get(tracking_uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
    if r.status_code >= 500:
        r.raise_for_status()


def transient(e: BaseException) -> bool:
    """Worth trying again: the server is unreachable or failing (5xx, 429), not refusing the request."""
    import requests

    return isinstance(e, requests.RequestException) or (isinstance(e, MlflowException) and not _permanent(e))


def _permanent(e: Exception) -> bool:
    """An HTTP 4xx answer (not 429): the server is there and refuses this request."""
    code = e.get_http_status_code() if isinstance(e, MlflowException) else 500
    return 400 <= code < 500 and code != 429


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


class MlflowMetrics(Callback):
    """Streams the loop's averaged metrics to an MLflow run, keyed by step (rank 0 only), skipping
    steps at or below `floor` (already logged before a restart). Sent by a MetricStream: an
    unreachable server never holds training up; see MetricStream for what waits and what is dropped."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "train/", floor: int = 0,
                 stream: MetricStream | None = None):
        self.prefix, self.floor = prefix, floor
        self.stream = stream or MetricStream(tracking_uri, run_id)

    def on_log(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.step <= self.floor:
            return
        self.stream.metrics({**metrics, "images_seen": state.images_seen}, state.step, self.prefix)

    def on_checkpoint(self, state: TrainState) -> None:
        # before the checkpoint is reported (this callback runs ahead of RayCheckpoints): metrics
        # up to this step must not die with a worker killed just after the report
        self.stream.flush(CHECKPOINT_FLUSH_S)

    def on_train_end(self, state: TrainState) -> None:
        self.stream.close()


def champion_version(c: MlflowClient, name: str):
    """The model version holding the champion alias, or None (no model or no alias yet)."""
    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def mlflow_monitor(cfg: PipelineConfig, data_dir, manifest: dict, tracking_uri: str, run_id: str, floor: int = 0):
    """The cheap in-training evaluation, streaming `monitor/<metric>_<n>` curves to the MLflow run.
    Uses the domain classifier (fast on CPU); None when it is off or the dataset has no such stats."""
    from gan_core.metrics.evaluator import DOMAIN, evaluator_for
    from gan_core.metrics.monitor import FIDMonitor
    from gan_core.models import family_for

    family = family_for(cfg.model)
    if cfg.eval.every == 0:
        return None
    if not family.image_input and not (data_dir / "ref_stats" / DOMAIN / "stats.json").is_file():
        return None
    stream = MetricStream(tracking_uri, run_id)  # like the loss curves: an unreachable server never blocks

    def sink(step, metrics, fingerprint):
        if step > floor:
            stream.metrics(metrics, step, prefix="monitor/")

    def on_error(step, error):
        stream.tag("monitor.error", f"step {step}: {type(error).__name__}: {error}")

    def grid_sink(step, grid):  # MLflow's UI shows these with a step slider, side by side across runs
        if step > floor:
            stream.image(grid, "samples", step)

    class StreamingMonitor(FIDMonitor):
        def on_train_end(self, state: TrainState) -> None:
            super().on_train_end(state)  # the last scoring first: its values join the stream
            stream.close()

    evaluator = evaluator_for(family, cfg.family, data_dir, manifest, DOMAIN)
    return StreamingMonitor(evaluator, cfg.eval.every, cfg.eval.n_cheap, cfg.eval.seed, sink, on_error,
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
