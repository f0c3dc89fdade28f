"""`ganpipe runs`: recent pipeline runs, from Prefect (flow run, state, start, duration) joined with
MLflow (the model version tagged with the flow run's id: dataset, arch, steps, metric, champion decision;
else the training run tagged with it, for a run that failed before registering). Works on the embedded
stack (Prefect's temporary server on GANPIPE_HOME's database) and on the services (PREFECT_API_URL)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Mapping

import typer

from flows.cli.app import app, cli_settings, fail

# the flows of flows/stages/pipeline.py, by name: importing it would pull torch and Ray into a listing
PIPELINE_FLOWS = ("ganpipe-pipeline", "ganpipe-retrain")


@dataclass(frozen=True)
class RunRow:
    flow_run_id: str
    flow_run: str  # Prefect's generated name, as its UI shows it
    flow: str
    state: str
    start: str | None  # UTC, ISO 8601; None while scheduled
    duration_s: float | None
    dataset: str
    arch: str
    steps: str
    model: str
    version: str
    metric: str
    value: float | None
    decision: str  # the gate's, with "champion now" / a manual move appended
    champion: bool


def _value(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def join(run: Mapping, version, training: Mapping | None, champion: str | None) -> RunRow:
    """One row from a flow run (dict of Prefect's fields), its model version (or None), the tags and
    params of its MLflow training run (or None) and the model's champion version now. The version's
    lineage tags win; then the training run; then the flow run's own parameters."""
    params = run.get("parameters") or {}
    vt = dict(version.tags) if version is not None else {}
    tt = (training or {}).get("tags", {})
    tp = (training or {}).get("params", {})
    dataset = vt.get("dataset.name") or tt.get("dataset.name") or params.get("dataset") or "?"
    if vt.get("dataset.version", "unversioned") != "unversioned":
        dataset += f"@{vt['dataset.version']}"
    is_champion = version is not None and str(version.version) == str(champion)
    decision = vt.get("promotion.decision", "")
    if vt.get("promotion.manual.kind"):
        decision += f"; {vt['promotion.manual.kind']} by {vt.get('promotion.manual.by', '?')}"
    if is_champion:
        decision += "; champion now"
    return RunRow(
        flow_run_id=str(run["id"]), flow_run=run["name"], flow=run["flow"], state=run["state"],
        start=run["start"], duration_s=run["duration_s"], dataset=dataset,
        arch=vt.get("model.arch") or tt.get("model.arch") or params.get("arch") or "?",
        steps=vt.get("checkpoint.step") or tp.get("train.steps") or str(params.get("steps") or "?"),
        model=version.name if version is not None else "", version=str(version.version) if version else "",
        metric=vt.get("eval.metric", ""), value=_value(vt.get("eval.value", vt.get("eval.fid"))),
        decision=decision.lstrip("; "), champion=is_champion)


# ---------------------------------------------------------------- Prefect

def _seconds(run) -> float | None:
    if run.start_time is None:
        return None
    end = run.end_time or datetime.now(timezone.utc)
    return round((end - run.start_time).total_seconds(), 1)


def prefect_client():
    """The server at PREFECT_API_URL; embedded, Prefect's API app run inside this process on
    GANPIPE_HOME's database (measured: ~5 s, where the temporary server process get_client()
    starts takes ~10 s; a listing needs no scheduler or other background service). Async: only
    Prefect's async client talks to an app in-process."""
    from prefect.client.orchestration import PrefectClient, get_client

    if os.environ.get("PREFECT_API_URL"):
        return get_client()
    from prefect.server.api.server import create_app

    return PrefectClient(api=create_app(ephemeral=True))


async def _flow_runs(limit: int) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with prefect_client() as pc:
        runs = await pc.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(PIPELINE_FLOWS))),
                                       sort=FlowRunSort.START_TIME_DESC, limit=limit)
        ids = list({r.flow_id for r in runs})
        flows = await pc.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=ids))) if ids else []
    names = {f.id: f.name for f in flows}
    return [(r, names.get(r.flow_id, "?")) for r in runs]


def flow_runs(limit: int) -> list[dict]:
    """The latest `limit` runs of the pipeline flows, newest start first, as plain dicts."""
    import asyncio

    return [{"id": str(r.id), "name": r.name, "flow": flow, "state": r.state_name or "?",
             "start": r.start_time.astimezone(timezone.utc).isoformat(timespec="seconds") if r.start_time else None,
             "duration_s": _seconds(r), "parameters": r.parameters} for r, flow in asyncio.run(_flow_runs(limit))]


def _no_embedded_database() -> bool:
    """Embedded, and Prefect's database was never created: no run ever happened in this home (and
    starting the temporary server just to create it costs ~20 s)."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        return False
    return not (os.path.isfile(os.path.join(os.environ["PREFECT_HOME"], "prefect.db")))


# ---------------------------------------------------------------- MLflow

def versions_by_flow_run(c) -> dict[str, object]:
    """flow run id -> the model version registered by it (the newest, if a retried run registered more)."""
    out, token = {}, None
    while True:
        page = c.search_model_versions(max_results=1000, page_token=token)
        for v in sorted(page, key=lambda v: int(v.version)):
            fr = v.tags.get("prefect.flow_run_id")
            if fr and fr != "none":
                out[fr] = v
        token = page.token
        if not token:
            return out


def training_run(c, flow_run_id: str, experiment_ids: list[str]) -> dict | None:
    """Tags and params of the MLflow training run tagged with this flow run (train stage's lineage tags)."""
    if not experiment_ids:
        return None
    found = c.search_runs(experiment_ids, f"tags.`lineage.prefect_flow_run_id` = '{flow_run_id}'", max_results=1)
    return {"tags": found[0].data.tags, "params": found[0].data.params} if found else None


def collect(s, limit: int) -> list[RunRow]:
    from contextlib import nullcontext

    from flows.ops.locks import file_lock
    from flows.ops.startup import lock_path
    from flows.registry.tracking import CHAMPION, client

    # embedded, Prefect's app checks its database's schema as it starts and MLflow may create its tables:
    # under the start-up lock, like every first use of the home (flows.ops.startup)
    embedded = not os.environ.get("PREFECT_API_URL")
    with file_lock(lock_path(s), holder=f"ganpipe runs, pid {os.getpid()}") if embedded else nullcontext():
        runs = flow_runs(limit)
        c = client(s.mlflow_uri)
        versions = versions_by_flow_run(c)
    experiments = [e.experiment_id for e in c.search_experiments()]
    champions: dict[str, str | None] = {}
    rows = []
    for r in runs:
        v = versions.get(r["id"])
        if v is not None and v.name not in champions:
            champions[v.name] = c.get_registered_model(v.name).aliases.get(CHAMPION)
        training = training_run(c, r["id"], experiments) if v is None else None
        rows.append(join(r, v, training, champions.get(v.name) if v is not None else None))
    return rows


# ---------------------------------------------------------------- output

def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def render(rows: list[RunRow]) -> str:
    if not rows:
        return "no pipeline runs"
    head = ["flow run", "flow", "state", "start (UTC)", "took", "dataset", "arch", "steps", "version", "metric",
            "decision"]
    body = [[r.flow_run, r.flow.removeprefix("ganpipe-"), r.state, (r.start or "-").replace("+00:00", ""),
             _duration(r.duration_s), r.dataset, r.arch, r.steps, f"{r.model} v{r.version}" if r.version else "-",
             f"{r.metric}={r.value:.4f}" if r.value is not None else "-", r.decision or "-"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


@app.command()
def runs(limit: int = typer.Option(10, "--limit", min=1, max=200, help="how many runs, newest first"),
         as_json: bool = typer.Option(False, "--json", help="one JSON list, full ids")):
    """Recent pipeline runs: flow run, state, start, duration, dataset, arch, steps, model version,
    metric and champion decision (Prefect joined with MLflow)."""
    s = cli_settings()
    if _no_embedded_database():
        rows = []
    else:
        try:
            rows = collect(s, limit)
        except Exception as e:  # an unreachable server: one line naming it, not a traceback
            fail(f"runs: {type(e).__name__}: {e}")
    typer.echo(json.dumps([asdict(r) for r in rows], indent=1) if as_json else render(rows))
