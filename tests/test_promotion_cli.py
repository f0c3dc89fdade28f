"""Run history (`ganpipe runs`), manual promotion and rollback (`ganpipe models promote|rollback`).

Fast: the refusal rules, the champion chain rollback walks, the history tag, the runs join and the
summary's history table, all pure. Slow, on a real MLflow registry: the registration gate's automatic
promotions (flows.stages.register.promote) and the CLI's manual moves share one history; a refused-tagged
version and one scored under another fingerprint are refused unless --force; rollback walks back and
fails clearly at the start of the chain. `ganpipe runs` lists real Prefect flow runs joined with their
model versions, embedded (the temporary server on GANPIPE_HOME) and on a Prefect + MLflow server pair
(test_promotion_shared's `servers` fixture)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.registry import history
from flows.registry.history import Move, champion_chain, previous_champion
from flows.registry.promotion import Version, refusal

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- pure: refusals

def _v(version: str, fp: str = "fpA", decision: str = "not promoted") -> Version:
    return Version(version, {"eval.fingerprint_id": fp, "promotion.decision": decision,
                             "promotion.reason": "FID nan is not finite"})


def test_refusal_rules():
    champ = _v("1", decision="promoted")
    assert refusal(_v("2"), champ, force=False) is None
    assert refusal(_v("2"), None, force=False) is None  # no champion yet: nothing to compare with
    assert "already the champion" in refusal(_v("1"), champ, force=False)
    assert "already the champion" in refusal(_v("1"), champ, force=True)  # nothing to move, even forced
    refused = refusal(_v("3", decision="refused"), champ, force=False)
    assert "refused at registration (FID nan is not finite)" in refused and "--force" in refused
    other = refusal(_v("4", fp="fpB"), champ, force=False)
    assert "fingerprint fpB" in other and "champion v1 under fpA" in other and "--force" in other
    assert refusal(_v("3", decision="refused"), champ, force=True) is None
    assert refusal(_v("4", fp="fpB"), champ, force=True) is None
    assert "refused" in refusal(_v("3", decision="refused"), None, force=False)  # refused even as the first


# ---------------------------------------------------------------- pure: the history and its chain

def _m(version: str, kind: str = "automatic", previous: str | None = None) -> Move:
    return Move(version, "2026-01-01T00:00:00+00:00", "automatic" if kind == "automatic" else "u@h", "why",
                previous, kind)


def test_rollback_walks_back_the_chain_not_back_and_forth():
    moves = [_m("1"), _m("2", previous="1"), _m("3", "manual", "2")]
    assert champion_chain(moves, "3") == ["1", "2", "3"] and previous_champion(moves, "3") == "2"
    moves.append(_m("2", "rollback", "3"))
    assert previous_champion(moves, "2") == "1"  # not back to 3
    moves.append(_m("1", "rollback", "2"))
    assert champion_chain(moves, "1") == ["1"] and previous_champion(moves, "1") is None
    # a manual promotion back to an earlier version is a new reign: rolling it back returns to the one before
    assert previous_champion([_m("1"), _m("2", previous="1"), _m("1", "manual", "2")], "1") == "2"
    # the alias moved outside ganpipe (MLflow UI): the champion it found is the current one
    assert previous_champion([_m("1"), _m("2", previous="1")], "5") == "2"
    # champion v1 got the alias before any history (or by hand): the first move's `previous` starts the chain
    assert previous_champion([_m("2", "manual", "1")], "2") == "1"
    assert previous_champion([], "1") is None and previous_champion([], None) is None


def test_history_tag_round_trip_and_limits(monkeypatch):
    moves = [_m(str(i), previous=str(i - 1) if i > 1 else None) for i in range(1, history.MAX_ENTRIES + 6)]
    moves[-1] = Move("9", "t", "u@h", "a | b", "8", "manual", forced=True)
    text = history.dump(moves)
    back = history.parse(text)
    assert len(back) == history.MAX_ENTRIES and back[-1] == moves[-1] and back[0] == moves[5]
    assert history.parse("") == [] and history.parse(None) == []
    with pytest.raises(ValueError, match="champion.history"):
        history.parse('{"not": "a list"}')
    monkeypatch.setenv("GANPIPE_USER", "ci-bot")
    assert history.who() == "ci-bot"
    monkeypatch.delenv("GANPIPE_USER")
    assert "@" in history.who()


def test_summary_shows_the_last_moves_newest_first():
    from flows.stages.summary import history_table, run_summary

    moves = [_m(str(i)) for i in range(1, 8)] + [Move("2", "t", "ann@box", "bad | data", "7", "rollback", True)]
    md = history_table(moves, rows=3)
    lines = [line for line in md.splitlines() if line.startswith("| v")]
    assert len(lines) == 3 and lines[0].startswith("| v2 | t | rollback by ann@box (forced) | bad \\| data | v7 |")
    assert lines[1].startswith("| v7 |") and "| automatic |" in lines[1]
    assert history_table([]) == ""
    cfg = {"data": {"name": "digits"}, "model": {"arch": "dcgan", "loss": "nonsat"}, "train": {"num_workers": 2}}
    training = {"meta": {"dataset_sha256": "d" * 64, "params_sha256": "p" * 64, "git_commit": "c0ffee"},
                "step": 40, "images_seen": 1280, "run_name": "r1"}
    evaluation = {"metric": "fid_300", "metrics": {"fid_300": 12.5}, "fingerprint": {"id": "fp1"}}
    reg = {"model_name": "m", "version": "8", "champion": False, "reason": "does not beat"}
    md = run_summary(cfg, training, evaluation, reg, {"run": "runs:/r", "model": "models:/m/8"}, moves)
    assert md.index("## Champion history") > md.index("[MLflow run]") and "rollback by ann@box" in md
    assert "Champion history" not in run_summary(cfg, training, evaluation, reg, {"run": "r", "model": "m"})


# ---------------------------------------------------------------- pure: the runs join

class _FakeVersion:  # the two attributes join reads of an MLflow ModelVersion (a plain record, no MLflow)
    def __init__(self, name, version, tags):
        self.name, self.version, self.tags = name, version, tags


def test_runs_join_prefers_version_then_training_run_then_parameters():
    from flows.cli.runs import join, render

    run = {"id": "abc", "name": "brave-fox", "flow": "ganpipe-pipeline", "state": "Completed",
           "start": "2026-01-01T00:00:00+00:00", "duration_s": 75.0, "parameters": {"dataset": "digits", "steps": 9}}
    v = _FakeVersion("m", "3", {"dataset.name": "shapes", "dataset.version": "v2", "model.arch": "dcgan",
                                "checkpoint.step": "40", "eval.metric": "fid_300", "eval.value": "8.5",
                                "promotion.decision": "promoted", "promotion.manual.kind": "rollback",
                                "promotion.manual.by": "u@h"})
    row = join(run, v, None, champion="3")
    assert (row.dataset, row.arch, row.steps, row.version, row.value) == ("shapes@v2", "dcgan", "40", "3", 8.5)
    assert row.decision == "promoted; rollback by u@h; champion now" and row.champion
    failed = join({**run, "state": "Failed"}, None, {"tags": {"model.arch": "wgan"}, "params": {"train.steps": "12"}}, None)
    assert (failed.dataset, failed.arch, failed.steps, failed.version, failed.decision) == ("digits", "wgan", "12", "", "")
    bare = join({**run, "parameters": {}}, None, None, None)
    assert (bare.dataset, bare.arch, bare.steps) == ("?", "?", "?")
    table = render([row, failed]).splitlines()
    assert table[0].startswith("flow run") and "1m15s" in table[1] and "m v3" in table[1] and "fid_300=8.5000" in table[1]
    assert render([]) == "no pipeline runs"


# ---------------------------------------------------------------- slow: a real registry

def _registry(c, name: str) -> dict[str, str]:
    """Five versions as registration leaves them (tags only; no model logged: the CLI reads tags):
    FID 10 and 12 under fingerprint fpA, FID 5 under fpB, one refused (NaN), FID 11 under fpA.
    Returns {label: version}."""
    c.create_registered_model(name)
    specs = {"a10": ("10.0", "fpA"), "a12": ("12.0", "fpA"), "b5": ("5.0", "fpB"), "nan": ("nan", "fpA"),
             "a11": ("11.0", "fpA")}
    return {label: str(c.create_model_version(name, source=f"s3://promo/{name}/{label}", tags={
        "eval.metric": "fid_300", "eval.value": value, "eval.fingerprint_id": fp}).version)
        for label, (value, fp) in specs.items()}


def _gate(c, name: str, version: str, value: float, fp: str, lock: Path):
    """The registration gate's promotion, as the register stage runs it."""
    from flows.registry.gate import Scored
    from flows.stages.register import promote

    return promote(c, name, version, Scored(value, fp, version, metric="fid_300"), 0.0, lock)


@pytest.mark.slow
def test_promote_refuse_force_and_rollback_on_the_embedded_registry(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.registry.tracking import client

    home, ws = tmp_path / "home", tmp_path / "ws"
    ws.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {"GANPIPE_HOME": str(home), "GANPIPE_WORKSPACE": str(ws), "MLFLOW_TRACKING_URI": uri,
           "GANPIPE_USER": "ann@box"}
    saved = dict(os.environ)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the file lock, as embedded
    try:
        for k, v in env.items():
            os.environ[k] = v
        c, name = client(uri), "promo-embedded"
        ver = _registry(c, name)
        lock = home / "locks" / f"promote-{name}.lock"
        assert _gate(c, name, ver["a10"], 10.0, "fpA", lock)[0]  # first valid model: automatic
        assert not _gate(c, name, ver["a12"], 12.0, "fpA", lock)[0]
        assert not _gate(c, name, ver["nan"], float("nan"), "fpA", lock)[0]
        assert c.get_model_version(name, ver["nan"]).tags["promotion.decision"] == "refused"

        runner = CliRunner()

        def cli(*args):
            return runner.invoke(app, list(args))

        def champion():
            return str(c.get_registered_model(name).aliases["champion"])

        r = cli("models", "promote", name, f"v{ver['a12']}", "--reason", "better samples by eye")
        assert r.exit_code == 0, r.output
        assert champion() == ver["a12"] and f"v{ver['a10']} -> v{ver['a12']}" in r.output
        t = c.get_model_version(name, ver["a12"]).tags
        assert (t["promotion.manual.by"], t["promotion.manual.reason"], t["promotion.manual.previous"],
                t["promotion.manual.forced"]) == ("ann@box", "better samples by eye", ver["a10"], "false")
        assert t["promotion.manual.at"].endswith("+00:00")
        assert c.get_model_version(name, ver["a10"]).tags["promotion.superseded_by"].startswith(f"v{ver['a12']} (manual")

        for label, why in (("nan", "refused at registration"), ("b5", "fingerprint fpB")):
            r = cli("models", "promote", name, ver[label], "--reason", "try")
            assert r.exit_code == 2 and why in r.output and "--force" in r.output, r.output
            assert champion() == ver["a12"]  # nothing moved
        r = cli("models", "promote", name, ver["a12"], "--reason", "again")
        assert r.exit_code == 2 and "already the champion" in r.output
        r = cli("models", "promote", name, "99", "--reason", "x")
        assert r.exit_code == 2 and "no version '99'" in r.output and "v1, v2, v3, v4, v5" in r.output
        r = cli("models", "promote", name, ver["b5"], "--reason", "   ")
        assert r.exit_code == 2 and "--reason is empty" in r.output

        r = cli("models", "promote", name, ver["b5"], "--reason", "new evaluator", "--force")
        assert r.exit_code == 0 and "(forced)" in r.output and champion() == ver["b5"], r.output
        assert c.get_model_version(name, ver["b5"]).tags["promotion.manual.forced"] == "true"
        # the gate afterwards: a candidate under fpA is not comparable with the fpB champion
        assert not _gate(c, name, ver["a11"], 11.0, "fpA", lock)[0]

        r = cli("models", "rollback", name, "--reason", "fpB evaluator was wrong")  # the same refusals apply
        assert r.exit_code == 2 and "fingerprint fpA" in r.output and champion() == ver["b5"], r.output
        r = cli("models", "rollback", name, "--reason", "fpB evaluator was wrong", "--force")
        assert r.exit_code == 0 and champion() == ver["a12"], r.output
        r = cli("models", "rollback", name, "--reason", "back to the gate's choice")
        assert r.exit_code == 0 and champion() == ver["a10"], r.output
        r = cli("models", "rollback", name, "--reason", "further")
        assert r.exit_code == 2 and "no champion before v1" in r.output and champion() == ver["a10"]

        moves = history.read(c, name)
        assert [(m.version, m.kind, m.by, m.forced) for m in moves] == [
            (ver["a10"], "automatic", "automatic", False), (ver["a12"], "manual", "ann@box", False),
            (ver["b5"], "manual", "ann@box", True), (ver["a12"], "rollback", "ann@box", True),
            (ver["a10"], "rollback", "ann@box", False)]
        assert moves[0].why == "first valid model under this name" and moves[-1].previous == ver["a12"]
        assert c.get_model_version(name, ver["a10"]).tags["promotion.manual.kind"] == "rollback"

        listed = cli("models", "list", name)
        assert listed.exit_code == 0, listed.output
        marked = [line for line in listed.output.splitlines() if line.startswith(" *")]
        assert len(marked) == 1 and f"v{ver['a10']} " in marked[0] and "rollback by ann@box" in marked[0]
        compared = cli("models", "compare", name, "--chart", str(tmp_path / "c.png"))
        assert compared.exit_code == 0, compared.output
        star = [line for line in compared.output.splitlines() if line.rstrip().endswith("*")]
        assert len(star) == 1 and star[0].split()[1] == ver["a10"]
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------- slow: `ganpipe runs` on real flow runs

# Two real Prefect flow runs under the pipeline's flow names. The completed one registers a version
# tagged with its flow run id through the registration gate (as the register stage does); the failed
# one has only a training run tagged with it (as when training fails after the train stage opened its run).
FLOWS = textwrap.dedent("""
    from flows.ops.settings import configure_environment, load_settings
    s = load_settings()
    configure_environment(s)
    from prefect import flow
    from prefect.runtime import flow_run
    from flows.registry.gate import Scored
    from flows.registry.tracking import client, experiment_id
    from flows.stages.register import promote, promote_lock_path

    NAME = "ganpipe-blobs-dcgan"

    @flow(name="ganpipe-pipeline")
    def pipeline(dataset: str = "blobs"):
        c = client(s.mlflow_uri)
        try:
            c.create_registered_model(NAME)
        except Exception:
            pass
        v = c.create_model_version(NAME, source="s3://runs/x", tags={
            "prefect.flow_run_id": str(flow_run.id), "dataset.name": dataset, "dataset.version": "unversioned",
            "model.arch": "dcgan", "checkpoint.step": "20", "eval.metric": "fid_64", "eval.value": "7.25",
            "eval.fingerprint_id": "fp"}).version
        promote(c, NAME, str(v), Scored(7.25, "fp", str(v), metric="fid_64"), 0.0, promote_lock_path(s, NAME))

    @flow(name="ganpipe-retrain")
    def retrain(arch: str = "wgan"):
        c = client(s.mlflow_uri)
        exp = experiment_id(c, "ganpipe-blobs", s.mlflow_artifact_root)
        c.create_run(exp, tags={"lineage.prefect_flow_run_id": str(flow_run.id), "model.arch": arch,
                                "dataset.name": "blobs"})
        raise RuntimeError("training failed on purpose")

    pipeline()
    try:
        retrain()
    except RuntimeError:
        pass
""")


def _env(home: Path, ws: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GANPIPE_", "RAY_"))}
    return {**env, "GANPIPE_HOME": str(home), "GANPIPE_WORKSPACE": str(ws), "PYTHONPATH": str(ROOT),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", **extra}


def _sh(env: dict, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


# Several `ganpipe` command lines in one process (typer's CliRunner on the same app): each process
# pays ~3 s of imports (MLflow, Prefect, torch), many times more on a loaded machine.
BATCH = textwrap.dedent("""
    import json, sys
    from typer.testing import CliRunner
    from flows.cli import app
    results = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]
    print("RESULTS " + json.dumps([[r.exit_code, r.output] for r in results]))
""")


def _batch(env: dict, ws: Path, *commands: list[str], flows: bool = False) -> list[tuple[int, str]]:
    """Exit code and output of each command, run in one process (after the two flows, with flows=True)."""
    out = _sh(env, sys.executable, "-c", (FLOWS if flows else "") + BATCH, json.dumps(commands), cwd=ws)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return [tuple(r) for r in json.loads(line.removeprefix("RESULTS "))]


def _check_rows(listing: str) -> None:
    rows = json.loads(listing)
    assert [r["flow"] for r in rows] == ["ganpipe-retrain", "ganpipe-pipeline"]  # newest start first
    failed, done = rows
    assert done["state"] == "Completed" and done["version"] == "1" and done["model"] == "ganpipe-blobs-dcgan"
    assert (done["dataset"], done["arch"], done["steps"], done["metric"], done["value"]) == ("blobs", "dcgan", "20",
                                                                                            "fid_64", 7.25)
    assert done["decision"] == "promoted; champion now" and done["champion"] and done["duration_s"] >= 0
    assert failed["state"] == "Failed" and failed["version"] == "" and failed["arch"] == "wgan"
    assert done["start"] <= failed["start"]


@pytest.mark.slow
def test_runs_lists_real_flow_runs_on_the_embedded_stack(tmp_path):
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    env = _env(home, ws)
    empty = _sh(env, str(BIN / "ganpipe"), "runs", cwd=ws)  # no Prefect database yet: nothing started
    assert empty.returncode == 0 and empty.stdout.strip() == "no pipeline runs", empty.stderr
    [(code, listing)] = _batch(env, ws, ["runs", "--json", "--limit", "5"], flows=True)
    assert code == 0, listing
    _check_rows(listing)


@pytest.mark.slow
def test_runs_promote_and_rollback_on_the_services(tmp_path, servers):
    from flows.registry.tracking import client

    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    env = _env(home, ws, PREFECT_API_URL=servers["prefect"], MLFLOW_TRACKING_URI=servers["mlflow"],
               GANPIPE_USER="bob@ci")
    c, name = client(servers["mlflow"]), "promo-services"
    ver = _registry(c, name)
    c.set_registered_model_alias(name, "champion", ver["a10"])  # as if registered before the history existed
    listing, table, refused, moved, back, none = _batch(
        env, ws, ["runs", "--json", "--limit", "5"], ["runs"],
        ["models", "promote", name, ver["b5"], "--reason", "try"],
        ["models", "promote", name, ver["a12"], "--reason", "by eye"],
        ["models", "rollback", name, "--reason", "undo"],
        ["models", "rollback", name, "--reason", "again"], flows=True)
    assert listing[0] == 0, listing[1]
    _check_rows(listing[1])
    assert table[0] == 0 and "ganpipe-blobs-dcgan v1" in table[1] and "Failed" in table[1], table[1]
    assert refused[0] == 2 and "fingerprint fpB" in refused[1], refused[1]
    assert moved[0] == 0 and back[0] == 0, moved[1] + back[1]
    assert str(c.get_registered_model(name).aliases["champion"]) == ver["a10"]
    moves = history.read(c, name)
    assert [(m.version, m.kind, m.by, m.previous) for m in moves] == [
        (ver["a12"], "manual", "bob@ci", ver["a10"]), (ver["a10"], "rollback", "bob@ci", ver["a12"])]
    assert none[0] == 2 and "no champion before v1" in none[1], none[1]
    # the promotions took the Prefect server's lock (a global concurrency limit), not a file in the home
    assert not (home / "locks" / f"promote-{name}.lock").exists()
    assert not (home / "locks" / "promote-ganpipe-blobs-dcgan.lock").exists()
