"""The markdown summary a pipeline run publishes as a Prefect artifact: what was trained, how it
scored, whether it became champion and why, with links into MLflow. Pure text from the stage records."""
from __future__ import annotations

import math
from urllib.parse import quote

from flows.ops.settings import without_password


def mlflow_links(tracking_uri: str, experiment_id: str | None, run_id: str | None, model: str,
                 version: str) -> dict[str, str]:
    """Browser links when MLflow is a server; with a local database there is no UI to link to,
    so the links fall back to the URIs that `mlflow` and `ganpipe` accept."""
    if tracking_uri.startswith(("http://", "https://")):
        base = without_password(tracking_uri).rstrip("/")
        return {"run": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
                "model": f"{base}/#/models/{quote(model)}/versions/{version}"}
    return {"run": f"runs:/{run_id}", "model": f"models:/{model}/{version}"}


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


HISTORY_ROWS = 5  # the last moves of the champion alias the summary shows; the full list is the model's tag


def history_table(moves: list, rows: int = HISTORY_ROWS) -> str:
    """The last moves of the champion alias (flows.registry.history.Move), newest first, as markdown."""
    if not moves:
        return ""
    head = "\n## Champion history\n\n| champion | when (UTC) | who | why | replaced |\n|---|---|---|---|---|\n"
    return head + "\n".join(_history_row(m) for m in reversed(moves[-rows:])) + "\n"


def _history_row(m) -> str:
    who = m.by if m.kind == "automatic" else f"{m.kind} by {m.by}"
    forced = " (forced)" if m.forced else ""
    replaced = f"v{m.previous}" if m.previous else "-"
    return f"| v{m.version} | {m.at} | {_cell(who)}{forced} | {_cell(m.why)} | {replaced} |"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def timings_table(spent: dict[str, float] | None) -> str:
    """Seconds per part of the run so far (flows.stages.records.timed), largest first."""
    if not spent:
        return ""
    rows = "\n".join(f"| {k} | {v:.1f} |" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))
    return f"\n## Where the time went\n\n| part | seconds |\n|---|---|\n{rows}\n"


def run_summary(cfg: dict, training: dict, evaluation: dict, registration: dict, links: dict[str, str],
                history: list | None = None, served: str | None = None, timings: dict | None = None) -> str:
    metrics = evaluation.get("metrics", {})
    rows = "\n".join(f"| {k} | {_num(v)} |" for k, v in sorted(metrics.items()))
    verdict = "**promoted to champion**" if registration["champion"] else "not promoted"
    fp = evaluation["fingerprint"]
    served_line = f"\nServed by `ganpipe deploy`: v{served} (a deployment follows the alias within seconds).\n" \
        if served else ""
    return f"""# {registration['model_name']} v{registration['version']}: {verdict}

{registration['reason']}

| metric | value |
|---|---|
{rows}

Gate: `{evaluation['metric']}`, {'higher' if evaluation.get('higher_is_better') else 'lower'} is better. Evaluator
fingerprint `{fp['id']}` ({fp.get('backbone', '?')}, n_fake={fp.get('n_fake', '?')}).

| | |
|---|---|
| dataset | {cfg['data']['name']} (content `{training['meta']['dataset_sha256'][:12]}`) |
| family | {cfg['model']['arch']} (loss {cfg['model']['loss']}) |
| steps | {training['step']} ({training['images_seen']} images, {cfg['train']['num_workers']} Ray workers) |
| params hash | `{training['meta']['params_sha256'][:12]}` |
| code | `{training['meta']['git_commit']}` |
| Ray run | `{training['run_name']}` |

[MLflow run]({links['run']}) · [model version]({links['model']})
{served_line}{history_table(history or [])}{timings_table(timings)}"""


def skip_summary(model: str, reason: str) -> str:
    return f"# {model}: retraining skipped\n\n{reason}\n"
