"""The `ganpipe` command. Environment (GANPIPE_HOME, Prefect/MLflow/Ray variables) is configured
before any of Prefect, MLflow or Ray is imported, so imports stay inside the commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from flows.settings import SettingsError, configure_environment, load_settings
from gan_core.config import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, evaluate and deploy GANs: Prefect + Ray Train + FID + MLflow + DVC.")
models_app = typer.Typer(no_args_is_help=True, help="Registered models.")
app.add_typer(models_app, name="models")
dataset_app = typer.Typer(no_args_is_help=True, help="Datasets: add (validated, DVC-versioned, catalogued), list, show.")
app.add_typer(dataset_app, name="dataset")
services_app = typer.Typer(no_args_is_help=True, help="The real service stack on 127.0.0.1: Prefect server, MLflow "
                                                      "server, S3-compatible store, Ray head + worker.")
app.add_typer(services_app, name="services")
STAGES = ("prepare", "train", "evaluate", "register")


def _settings():
    try:
        s = load_settings()
    except SettingsError as e:
        raise typer.BadParameter(str(e)) from e
    configure_environment(s)
    return s


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def run(overrides: Optional[List[str]] = typer.Argument(None, help="section.field=value, e.g. train.steps=500")):
    """Run the whole pipeline (Prefect flow) on the configured services (embedded by default)."""
    s = _settings()
    from flows.params import load_config

    try:
        load_config(s.params_file, overrides or [], write=False)  # fail before Prefect starts
    except ConfigError as e:
        _fail(str(e))
    from flows.pipeline import pipeline
    from flows.startup import start_shared_state

    try:
        # runs started together in one home create its databases one at a time
        start_shared_state(s, lambda who: typer.echo(f"waiting for another start-up in {s.home}: {who}", err=True))
        out = pipeline(overrides=overrides or [])
    except Exception as e:  # Prefect has logged the traceback; end with the cause on one line
        typer.secho(f"error: pipeline failed: {type(e).__name__}: {e}", fg="red", err=True)
        raise typer.Exit(1) from None
    ev, reg = out["evaluation"], out["registration"]
    verdict = "yes" if reg["champion"] else "no"
    typer.echo("")
    better = "higher" if ev.get("higher_is_better") else "lower"
    typer.echo(f"{ev['metric']} ({ev['fingerprint']['backbone']}, {better} is better): {ev['value']:.4f}")
    others = {k: v for k, v in ev["metrics"].items() if k != ev["metric"] and not k.endswith("_std")}
    typer.echo("also:           " + ", ".join(f"{k}={v:.4f}" for k, v in others.items()))
    typer.echo(f"model version:  {reg['model_name']} v{reg['version']}  ({reg['model_uri']})")
    typer.echo(f"champion:       {verdict}: {reg['reason']}")
    typer.echo(f"sample grid:    {ev['samples']}")
    typer.echo(f"prepare:        {'skipped (unchanged)' if out['prepared']['skipped'] else 'ran'}")


@app.command()
def serve(config: Optional[Path] = typer.Option(None, help="deployments file (schedule, names); default "
                                                            "infra/deployments.yaml, or built-in defaults without it"),
          cron: Optional[str] = typer.Option(None, help="override the retraining schedule, e.g. '*/30 * * * *'")):
    """Publish the scheduled-retrain and on-demand deployments to the Prefect server and run their
    flow runs here until stopped (Ctrl-C). Needs PREFECT_API_URL (e.g. from `ganpipe services up`)."""
    import os

    s = _settings()
    if not os.environ.get("PREFECT_API_URL"):
        _fail("serve: PREFECT_API_URL is not set; start the services (`ganpipe services up`) and "
              "export GANPIPE_ENV_FILE, or point PREFECT_API_URL at a Prefect server")
    from flows.deployments import DeployConfig, serve as serve_deployments
    from flows.startup import start_shared_state

    # beside a `ganpipe run` in the same home: MLflow's SQLite is created once
    start_shared_state(s, lambda who: typer.echo(f"waiting for another start-up in {s.home}: {who}", err=True))

    default = s.workspace / "infra" / "deployments.yaml"
    try:
        if config is None and not default.is_file():
            cfg = DeployConfig(**({"cron": cron} if cron else {}))
            cfg.validate(default)
        else:
            cfg = DeployConfig.load(default if config is None else config if config.is_absolute()
                                    else s.workspace / config, cron)
    except ConfigError as e:
        _fail(str(e))
    serve_deployments(cfg)


@app.command()
def stage(name: str = typer.Argument(..., help="|".join(STAGES))):
    """Run one stage outside Prefect: the `cmd` of each dvc.yaml stage."""
    if name not in STAGES:
        _fail(f"stage: unknown stage {name!r} (known: {', '.join(STAGES)})")
    s = _settings()
    from flows.params import load_config

    try:
        cfg = load_config(s.params_file)
    except ConfigError as e:
        _fail(str(e))
    lineage = {"prefect.flow_run_id": "none (dvc repro)"}
    if name == "prepare":
        from flows.prepare import prepare

        ref = prepare(s, cfg)
        typer.echo(f"prepared {ref['count']} images, content {ref['content_sha256'][:12]}")
    elif name == "train":
        from flows.train import train_stage

        ref = train_stage(s, cfg, lineage)
        typer.echo(f"trained {ref['run_name']} to step {ref['step']}")
    elif name == "evaluate":
        from flows.evaluate import evaluate

        ev = evaluate(s, cfg)
        typer.echo(f"{ev['metric']} = {ev['value']:.4f}")
    else:
        from flows.register import register
        from flows.tracking import client

        reg = register(s, cfg, lineage)
        if reg.get("mlflow_run_id"):
            client(s.mlflow_uri).set_terminated(reg["mlflow_run_id"], "FINISHED")
        typer.echo(f"{reg['model_name']} v{reg['version']} champion={reg['champion']}: {reg['reason']}")


@app.command()
def sample(model: str = typer.Argument(..., help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
           n: int = typer.Option(64, min=1, max=1024), seed: int = typer.Option(0),
           label: Optional[int] = typer.Option(None, "--class", help="class (cgan, biggan) or categorical code "
                                                                      "(infogan) of every image; default: cycle"),
           out: Path = typer.Option(Path("samples.png")),
           truncation: float = typer.Option(1.0, min=0.0, max=2.0, help="style models: pull w toward the "
                                            "average by psi (0.7: typical, cleaner; 1: off)"),
           mix: bool = typer.Option(False, "--mix", help="style models: a style-mixing grid (row seeds give the "
                                    "first --layers styles, column seeds the rest)"),
           layers: Optional[int] = typer.Option(None, help="with --mix: styles taken from the row seed "
                                                "(default: those of 8 px and below)"),
           interpolate: Optional[int] = typer.Option(None, help="style models: a strip from --seed to this seed"),
           steps: int = typer.Option(8, min=2, max=64, help="images in an --interpolate strip")):
    """Generate an n-image grid from a registered model or a checkpoint file."""
    s = _settings()
    import math

    import torch

    from gan_core.images import make_grid, save_png
    from gan_core.metrics.fid import generate, latent_of

    G = _load_generator(s, model)
    if "input" in getattr(G, "exported_as", {}):  # image-conditioned: held-out input | output | target
        from flows.cli_images import heldout_samples

        images, columns = heldout_samples(s, G, n, seed)
        path = save_png(out, make_grid(images, columns), {"model": model, "seed": seed, "n": n})
        typer.echo(str(path.resolve()))
        return
    from flows.cli_styles import is_styled, styled_sample

    if is_styled(G):
        try:
            images, columns, extra = styled_sample(G, n, seed, truncation, mix, layers, interpolate, steps)
        except ValueError as e:
            _fail(str(e))
        provenance = {"model": model, "seed": seed, "n": len(images), "truncation": truncation, **extra}
        typer.echo(str(save_png(out, make_grid(images, columns), provenance).resolve()))
        return
    if mix or interpolate is not None or truncation != 1.0 or layers is not None:
        _fail("--truncation, --mix, --layers and --interpolate need a style-based model (model.arch=stylegan)")
    labels = None
    if label is not None:
        controls = latent_of(G).controls
        if controls == 0 or not 0 <= label < controls:
            _fail(f"--class: {label} is not a class or code of this model "
                  f"({'it has none' if controls == 0 else f'valid: 0..{controls - 1}'})")
        labels = torch.full((n,), label, dtype=torch.long)
    images = generate(G, n, seed, batch_size=256, labels=labels)
    path = save_png(out, make_grid(images, int(math.ceil(math.sqrt(n)))),
                    {"model": model, "seed": seed, "n": n, "class": label})
    typer.echo(str(path.resolve()))


def _load_generator(s, model: str):
    """G_ema from a registered model (models:/...) or a checkpoint file, with its LatentSpec.
    Neither path unpickles: a checkpoint loads weights-only, and a registered model must be a
    torch.export (pt2) program, checked on the downloaded files before MLflow reads any of them."""
    if model.startswith("models:/"):
        import os
        import tempfile

        import mlflow.artifacts
        import mlflow.pytorch
        from mlflow.models import Model

        from gan_core.latent import LatentSpec

        def not_pt2(local: Path, mlmodel: Model) -> str | None:
            # mlflow loads data/model.pth with torch.load (a pickle: its payload runs on load) whenever
            # that file exists, and the MLmodel does not record the format: the files tell
            flavor = mlmodel.flavors.get("pytorch")
            if flavor is None:
                return "it has no pytorch flavor"
            if flavor.get("code"):
                return "it carries a code folder, which loading would put on sys.path"
            data = (local / flavor["model_data"]).resolve()
            files = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
            if not data.is_relative_to(local.resolve()) or files != ["model.pt2"]:
                return (f"its model data is {files or 'missing'}, not a single model.pt2 "
                        "(serialization_format='pickle' writes model.pth, which loading would unpickle)")
            return None

        mlflow.set_tracking_uri(s.mlflow_uri)
        with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
            # one download, inspected and then loaded: the checked files are the loaded files
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=tmp))
            mlmodel = Model.load(str(local))  # the MLmodel YAML only
            why = not_pt2(local, mlmodel)
            if why:
                _fail(f"{model}: refused: {why}. Only torch.export (pt2) programs are loaded, since a pickled "
                      "model can run code when loaded; re-register it with serialization_format='pt2'")
            # MLflow (3.17) allows pickle by default and then skips its check that a pt2 archive holds
            # no pickled records: turn the check on for this load
            allow = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
            try:
                G = mlflow.pytorch.load_model(str(local))
            finally:
                if allow is None:
                    os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
                else:
                    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = allow
        meta = mlmodel.metadata or {}
        if "style" in meta:  # takes (z, z_mix, psi, crossover): callable as G(z) like every generator
            from flows.cli_styles import StyleDefaults

            return StyleDefaults(G, LatentSpec.from_dict(meta["latent"]), meta)
        G.exported_as = meta  # an exported (pt2) program has no attributes: the metadata says what it takes
        if "input" not in meta and not hasattr(G, "latent"):  # noise families: the latent spec
            z_dim = int(mlmodel.signature.inputs.inputs[0].shape[-1])
            G.latent = LatentSpec.from_dict(meta["latent"]) if meta.get("latent") else LatentSpec(z_dim)
        return G
    from gan_core.checkpoint import CheckpointError, load_checkpoint, rebuild

    try:
        cfg, state = rebuild(load_checkpoint(model))
    except CheckpointError as e:
        _fail(f"{model}: refused: {e}")
    G = state.family.infer(state.G_ema.eval())  # what registration would export
    if state.family.image_input or hasattr(G, "export_inputs"):
        from flows.register import export_inputs

        meta = export_inputs(cfg, G)[1]
        if "style" in meta:
            from flows.cli_styles import StyleDefaults

            return StyleDefaults(G, G.latent, meta)
        G.exported_as = meta
    return G


@app.command()
def evaluate(
    model: Optional[str] = typer.Argument(None, help="models:/NAME@champion, models:/NAME/3, or a checkpoint .pt"),
    n: Optional[int] = typer.Option(None, "--n", min=10, help="generated samples (default eval.n_fake)"),
    backbone: Optional[str] = typer.Option(None, help="domain-classifier | inception (default eval.backbone)"),
    real: Optional[Path] = typer.Option(None, help="folder of real images (with --fake: folder vs folder)"),
    fake: Optional[Path] = typer.Option(None, help="folder of generated images"),
    data: Optional[Path] = typer.Option(None, help="prepared dataset folder (default data/prepared/<data.name>)"),
    seed: Optional[int] = typer.Option(None, help="latent seed (default eval.seed)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """FID, KID, IS and precision/recall of a model against a dataset's reference statistics, or of
    one image folder against another, with the evaluator fingerprint the numbers hold under."""

    s = _settings()
    from flows.params import load_config
    from gan_core.data import load_manifest
    from gan_core.images import read_folder
    from gan_core.metrics.evaluator import DOMAIN, folder_evaluator, load_backbone, load_evaluator
    from gan_core.metrics.frechet import MetricError

    cfg = load_config(s.params_file, write=False)
    name = backbone or cfg.eval.backbone
    data_dir = data or s.prepared_dir(cfg.data.name)
    seed = cfg.eval.seed if seed is None else seed
    try:
        if (real is None) != (fake is None):
            _fail("evaluate: --real and --fake go together (folder vs folder)")
        if real is not None:
            if model is not None:
                _fail("evaluate: give a model or --real/--fake folders, not both")
            bb = load_backbone(name, data_dir if name == DOMAIN else None)
            channels = int(load_manifest(data_dir)["shape"][0]) if name == DOMAIN else 3
            ev = folder_evaluator(read_folder(real, channels), bb)
            metrics, fp = ev.score_images(read_folder(fake, channels), cfg.eval.batch_size, seed)
        elif model is not None:
            ev = load_evaluator(data_dir, load_manifest(data_dir), name)
            metrics, fp = ev.evaluate(_load_generator(s, model), n or cfg.eval.n_fake, seed, cfg.eval.batch_size)
        else:
            _fail("evaluate: give a model (models:/... or a checkpoint) or --real DIR --fake DIR")
    except (MetricError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps({"metrics": metrics, "fingerprint": fp.to_dict()}, indent=2, sort_keys=True))
        return
    for k, v in metrics.items():
        typer.echo(f"{k:<16} {v:.6f}")
    typer.echo(f"fingerprint      {fp.id}  ({fp.backbone}, resize={fp.resize}, n_real={fp.n_real}, n_fake={fp.n_fake})")


@models_app.command("list")
def models_list(name: Optional[str] = typer.Argument(None, help="registered model name (default: all)")):
    """Versions with FID, fingerprint, champion mark and lineage."""
    s = _settings()
    from flows.tracking import CHAMPION, client

    c = client(s.mlflow_uri)
    names = [name] if name else [m.name for m in c.search_registered_models()]
    for n_ in names:
        champ = c.get_registered_model(n_).aliases.get(CHAMPION)
        typer.echo(n_)
        for v in sorted(c.search_model_versions(f"name='{n_}'"), key=lambda v: int(v.version)):
            t = v.tags
            mark = "*" if str(v.version) == str(champ) else " "
            typer.echo(f" {mark} v{v.version:<4} {t.get('eval.metric', '?')}={float(t.get('eval.value', t.get('eval.fid', 'nan'))):9.4f} "
                       f"fp={t.get('eval.fingerprint_id', '?')} data={t.get('dataset.content_sha256', '?')[:12]} "
                       f"steps={t.get('checkpoint.step', '?')} {t.get('promotion.decision', '')}")


@models_app.command("compare")
def models_compare(name: Optional[str] = typer.Argument(None, help="registered model name (default: all)"),
                   chart: Path = typer.Option(Path("reports/compare.png"), help="where to write the PNG chart")):
    """Versions side by side: FID + fingerprint, dataset version, arch, key params, steps, images/s,
    champion; plus a PNG chart of FID (and throughput) per version."""
    s = _settings()
    from flows.compare import collect, render_table, write_chart
    from flows.tracking import client

    try:
        rows = collect(client(s.mlflow_uri), name)
    except ValueError as e:
        _fail(f"models compare: {e}")
    typer.echo(render_table(rows))
    if rows:
        out = write_chart(rows, chart if chart.is_absolute() else s.workspace / chart)
        typer.echo(f"chart: {out}")


def _services_config():
    from infra.config import ServicesConfig

    try:
        s = load_settings()
        return ServicesConfig.from_env(s.home)
    except (SettingsError, ValueError) as e:
        _fail(f"services: {e}")


@services_app.command("up")
def services_up():
    """Start (or keep) every service, each health-checked; write GANPIPE_HOME/services/ganpipe.env."""
    from infra.process import ServiceError
    from infra.services import up

    cfg = _services_config()
    try:
        env_file = up(cfg, typer.echo)
    except ServiceError as e:
        _fail(f"services up: {e}")
    typer.echo(f"\nsettings: {env_file}\nuse them:  export GANPIPE_ENV_FILE={env_file}")


@services_app.command("down")
def services_down():
    """Stop every service (SIGTERM to its process group, SIGKILL after a grace period)."""
    from infra.services import down

    down(_services_config(), typer.echo)


@services_app.command("status")
def services_status(json_out: bool = typer.Option(False, "--json", help="machine-readable")):
    """Each service: healthy | unhealthy | stopped, with pid, endpoint and log. Exit 1 unless all healthy."""
    from infra.services import status

    rows = status(_services_config())
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(f"{r['name']:<11} {r['state']:<9} pid={r['pid'] or '-':<8} {r['endpoint']}  log {r['log']}")
    if not all(r["state"] == "healthy" for r in rows):
        raise typer.Exit(1)


@dataset_app.command("add")
def dataset_add(
    name: str = typer.Argument(..., help="dataset name (lower-case letters, digits, '-', '_')"),
    source: str = typer.Argument(..., help="folder | .zip | .tar(.gz) | .npz | IDX file | s3://bucket/prefix | "
                                           "sklearn-digits | synthetic-blobs | synthetic-shapes | mnist | "
                                           "fashion-mnist | cifar10"),
    kind: str = typer.Option("auto", help="auto (labelled when there are class folders/labels) | labelled | "
                                          "unconditional | paired (two domain folders, files matched by "
                                          "name) | unpaired (two domain folders) | superres (high-res images)"),
    resolution: int = typer.Option(32, help="square side after resizing (power of two)"),
    channels: int = typer.Option(3, help="1 (grey) or 3 (RGB)"),
    policy: str = typer.Option("fail", help="fail: any rejected file refuses the add | skip: rejects are "
                                            "reported and left out"),
    modes: str = typer.Option("convert", help="convert (RGBA/P/CMYK/16-bit -> L or RGB) | reject"),
    resize: str = typer.Option("crop", help="crop (centre square, then resize) | stretch | reject"),
    duplicates: str = typer.Option("drop", help="drop (report exact duplicates) | keep"),
    report: Optional[Path] = typer.Option(None, help="also write the full ingestion report (JSON) here"),
):
    """Validate SOURCE, version it with DVC (pushed to the remote) and add it to data/catalog.yaml.
    Identical content gives back the existing version; a failed add leaves nothing behind."""
    s = _settings()
    from flows.datasets import add, report_json
    from gan_core.files import DiskFullError
    from gan_core.ingest.policy import IngestPolicy
    from gan_core.ingest.report import IngestError

    try:
        pol = IngestPolicy(resolution=resolution, channels=channels, modes=modes, resize=resize,
                           duplicates=duplicates, on_reject=policy)
        out = add(s, name, source, pol, kind)
    except (IngestError, ConfigError, DiskFullError) as e:
        _fail(str(e))
    if report is not None:
        report.write_text(report_json(out["report"]))
    r = out["report"]
    typer.echo(f"{r['source']}: {r['accepted']} accepted, {r['rejected_total']} rejected "
               + (f"({', '.join(f'{k}: {v}' for k, v in r['rejected_by_reason'].items())})" if r["rejected_total"] else ""))
    for item in r["rejected"][:20]:
        typer.echo(f"  - {item['path']}: {item['reason']} ({item['detail']})")
    if r["converted"]:
        typer.echo("converted: " + ", ".join(f"{k} x{v}" for k, v in r["converted"].items()))
    if out["created"]:
        typer.echo(f"{name}@{out['version']}: new version, content {out['content_sha256'][:12]}, DVC-tracked and "
                   f"pushed; commit data/catalog.yaml and data/datasets/{name}/ to git")
    else:
        typer.echo(f"{name}@{out['version']}: identical content already catalogued; nothing changed")


@dataset_app.command("list")
def dataset_list():
    """Every catalogued dataset version (latest marked *)."""
    s = _settings()
    from flows.datasets import listing

    rows = listing(s)
    if not rows:
        typer.echo("no catalogued datasets (built-in: digits, blobs, shapes); add one with `ganpipe dataset add`")
    for r in rows:
        what = f"domains={'/'.join(r['domains'])}" if r.get("domains") else \
            f"classes={len(r['classes']) if r.get('classes') else 0}"
        typer.echo(f"{'*' if r['latest'] else ' '} {r['name']}@{r['version']:<4} {r['kind']:<13} {r['count']:>7} images "
                   f"{r['resolution']}x{r['resolution']}x{r['channels']} {what} "
                   f"sha={r['content_sha256'][:12]} {r['created']} {r['source']}")


@dataset_app.command("show")
def dataset_show(spec: str = typer.Argument(..., help="NAME or NAME@VERSION"),
                 grid: Path = typer.Option(Path("dataset.png"), help="where to write a sample grid PNG")):
    """Statistics of one dataset version (restored with dvc pull if needed) and a sample grid."""

    s = _settings()
    from flows.datasets import show
    from gan_core.config import DATASET_RE

    m = DATASET_RE.match(spec)
    if not m:
        _fail(f"{spec!r}: expected NAME or NAME@vN")
    try:
        out = show(s, m["name"], None if m["version"] in (None, "latest") else m["version"], grid)
    except ConfigError as e:
        _fail(f"{spec}: {e.reason}")
    typer.echo(json.dumps(out, indent=2, sort_keys=True))


from flows import cli_images  # noqa: E402  (registers `translate` on app)


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
