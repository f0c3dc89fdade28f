"""`ganpipe models compare`: registered model versions side by side (FID, lineage, key params,
throughput) as a plain-text table and a PNG chart."""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.registry.gate import epsilon_of
from flows.registry.tracking import CHAMPION
from flows.serving.tags import served_version

MISSING = "?"
THROUGHPUT = "train/images_per_s"
# Row.params key -> run param (flows.registry.tracking.flat_params names them `section.field`)
PARAMS = {"loss": "model.loss", "z_dim": "model.z_dim", "batch_size": "train.batch_size",
          "lr_g": "train.lr_g", "lr_d": "train.lr_d", "num_workers": "train.num_workers"}


@dataclass(frozen=True)
class Row:
    name: str
    version: int
    fid: float
    metric: str
    fingerprint: str
    dataset: str
    arch: str
    params: dict = field(hash=False)
    steps: str
    images_per_s: float
    champion: bool
    decision: str
    served: bool = False  # the version `ganpipe deploy` serves (the model's serving.version tag)
    epsilon: float | None = None  # DP models' privacy.epsilon tag; None: trained without differential privacy


# ---------------------------------------------------------------- collect

def _to_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _model_aliases(c: MlflowClient) -> dict[str, dict]:
    """name -> {alias: version} for every registered model (the search pages at 100)."""
    out, token = {}, None
    while True:
        page = c.search_registered_models(max_results=100, page_token=token)
        out.update({m.name: dict(m.aliases or {}) for m in page})
        token = page.token
        if not token:
            return out


def _run(c: MlflowClient, version):
    """The training run of a version, or None: register tags `mlflow.run_id` as str(None) when
    training had no run, and a run may have been deleted since."""
    run_id = version.tags.get("mlflow.run_id") or version.run_id
    if not run_id or run_id == "None":
        return None
    try:
        return c.get_run(run_id)
    except MlflowException:
        return None


def _images_per_s(c: MlflowClient, run) -> float:
    """Mean throughput over the run, leaving out the first log point (warm-up: compilation,
    data-loader start) when there are later ones."""
    if run is None or THROUGHPUT not in run.data.metrics:
        return math.nan
    history = sorted(c.get_metric_history(run.info.run_id, THROUGHPUT), key=lambda m: (m.step, m.timestamp))
    values = [m.value for m in history[1:] or history]
    return sum(values) / len(values) if values else math.nan


def _row(c: MlflowClient, version, champion: str | None) -> Row:
    tags = version.tags
    run = _run(c, version)
    params = run.data.params if run else {}
    metric = tags.get("eval.metric", MISSING)
    fid = _to_float(tags.get("eval.value", tags.get("eval.fid")))  # the family's gate metric (eval.fid: older)
    if "eval.value" not in tags and "eval.fid" not in tags and run is not None:  # older: the run's metric
        fid = _to_float(run.data.metrics.get(metric))
    row_params = {k: params.get(p, MISSING) for k, p in PARAMS.items()}
    if row_params["loss"] == MISSING:
        row_params["loss"] = tags.get("model.loss", MISSING)
    return Row(
        name=version.name, version=int(version.version), fid=fid, metric=metric,
        fingerprint=tags.get("eval.fingerprint_id", MISSING),
        dataset=f"{tags.get('dataset.name', MISSING)}@{tags.get('dataset.version', MISSING)}",
        arch=tags.get("model.arch", MISSING), params=row_params,
        steps=tags.get("checkpoint.step") or params.get("train.steps", MISSING),
        images_per_s=_images_per_s(c, run), champion=str(version.version) == str(champion),
        decision=tags.get("promotion.decision", ""), epsilon=epsilon_of(tags))


def collect(c: MlflowClient, name: str | None = None) -> list[Row]:
    """One row per registered model version (all models, or NAME), by model name then version."""
    aliases = _model_aliases(c)
    if name is not None and name not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise ValueError(f"no registered model {name!r}; known models: {known}")
    rows = []
    for n in sorted(aliases) if name is None else [name]:
        # quoted for the filter grammar: names may contain a quote
        escaped = n.replace("'", "\\'")
        versions = c.search_model_versions(f"name='{escaped}'")
        served = served_version(c, n)
        rows += [replace(_row(c, v, aliases[n].get(CHAMPION)), served=str(v.version) == served) for v in versions]
    return sorted(rows, key=lambda r: (r.name, r.version))


# ---------------------------------------------------------------- table

def _num(x: float, fmt: str) -> str:
    return format(x, fmt) if math.isfinite(x) else "nan"


def _cells(r: Row, metric_in_cell: bool) -> list[str]:
    p = r.params
    fid = _num(r.fid, ".4f") + (f" ({r.metric})" if metric_in_cell else "")
    return [r.name, str(r.version), fid, r.fingerprint, r.dataset, r.arch, str(p["loss"]), str(p["z_dim"]),
            str(p["batch_size"]), str(p["lr_g"]), str(p["lr_d"]), r.steps,
            "" if r.epsilon is None else _num(r.epsilon, ".3g"),  # blank: not a DP model
            _num(r.images_per_s, ".1f"),
            "*" if r.champion else ""]


def _footnotes(rows: list[Row]) -> list[str]:
    """FID depends on the feature extractor, sample count and reference stats (the fingerprint):
    numbers under different fingerprints must not be ranked against each other."""
    notes = []
    for name in sorted({r.name for r in rows}):
        fps = sorted({r.fingerprint for r in rows if r.name == name})
        if len(fps) > 1:
            notes.append(f"note: {name}: FIDs under different fingerprints ({', '.join(fps)}) are not comparable")
    return notes


def render_table(rows: list[Row]) -> str:
    if not rows:
        return "no registered model versions"
    metrics = {r.metric for r in rows}
    one_metric = len(metrics) == 1
    # the gate metric is the family's: FID for noise families, PSNR for super-resolution, ...
    label = "FID" if all(m.startswith("fid") or m == MISSING for m in metrics) else "gate"
    head = ["model", "v", f"{label}({next(iter(metrics))})" if one_metric else f"{label}(metric)", "fingerprint",
            "dataset", "arch", "loss", "z", "bs", "lr_g", "lr_d", "steps", "eps", "img/s", "champion"]
    body = [_cells(r, not one_metric) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    numeric = {1, 2, 7, 8, 9, 10, 11, 12, 13}  # right-aligned so digits line up

    def fmt(line):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    served = [f"served: {r.name} v{r.version} (ganpipe deploy)" for r in rows if r.served]
    return "\n".join([fmt(head), *map(fmt, body), *_footnotes(rows), *served])


# ---------------------------------------------------------------- chart

def _panel(ax, rows: list[Row], colours: dict[str, str]) -> None:
    """FID bars (colour = fingerprint) with throughput on a secondary axis, for one model."""
    x = list(range(len(rows)))
    finite = [r.fid if math.isfinite(r.fid) else 0.0 for r in rows]
    bars = ax.bar(x, finite, color=[colours[r.fingerprint] for r in rows])
    top = max(finite, default=0.0) or 1.0
    for i, (r, bar) in enumerate(zip(rows, bars)):
        if not math.isfinite(r.fid):  # no bar to draw: mark the version so it is not read as FID 0
            ax.plot(i, 0, marker="x", color=colours[r.fingerprint], markersize=10, mew=2.5, clip_on=False,
                    zorder=3)
            ax.annotate("FID nan", (i, 0), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8)
        if r.champion:
            bar.set_edgecolor("black")
            bar.set_linewidth(2.5)
            ax.annotate("champion", (i, bar.get_height()), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax.set_ylim(0, top * 1.2)
    ax.set_xticks(x, [f"v{r.version}" for r in rows])
    ax.set_title(rows[0].name)
    metrics = sorted({r.metric for r in rows})
    ax.set_ylabel(f"FID ({', '.join(metrics)})")
    if not any(math.isfinite(r.images_per_s) for r in rows):
        return
    tput = ax.twinx()
    tput.plot(x, [r.images_per_s for r in rows], "o--", color="dimgray")
    tput.set_ylabel("images/s", color="dimgray")
    tput.set_ylim(bottom=0)


def _figure(rows: list[Row]):
    # Figure without pyplot: Agg rendering, no global backend switch, no figure registry to leak
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = sorted({r.name for r in rows})
    fig = Figure(figsize=(max(6.0, 0.7 * max((sum(r.name == n for r in rows) for n in names), default=1) + 3),
                          3.2 * max(len(names), 1) + 0.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    if not rows:
        fig.text(0.5, 0.5, "no registered model versions", ha="center", va="center")
        return fig
    palette = [f"C{i}" for i in range(10)]
    fingerprints = sorted({r.fingerprint for r in rows})
    colours = {fp: palette[i % len(palette)] for i, fp in enumerate(fingerprints)}
    for ax, n in zip(fig.subplots(len(names), 1, squeeze=False)[:, 0], names):
        _panel(ax, [r for r in rows if r.name == n], colours)
    handles = [Patch(color=colours[fp], label=f"fingerprint {fp}") for fp in fingerprints]
    handles += [Patch(facecolor="white", edgecolor="black", linewidth=2.5, label="champion"),
                Line2D([], [], marker="x", color="black", linestyle="", label="FID nan (colour = fingerprint)"),
                Line2D([], [], marker="o", linestyle="--", color="dimgray", label="images/s")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8)
    return fig


def write_chart(rows: list[Row], path: Path | str) -> Path:
    """Write the PNG atomically (temp file in the same directory, then rename), so a reader never
    sees a half-written chart and a failure leaves any previous one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
