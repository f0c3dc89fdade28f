"""`ganpipe dataset add` for real: DVC add/push to a local and an S3 remote (moto on 127.0.0.1),
the catalog, idempotence, atomic failure, selection by name/version, and `dvc pull` in a fresh clone."""
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.data import catalog
from flows.data.datasets import add, listing, restore, show
from flows.ops.params import load_config
from flows.ops.settings import load_settings
from gan_core.config import ConfigError
from gan_core.data import load_prepared
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import IngestError
from s3server import MotoServer
from workspace import BIN, env_for, ganpipe, make_workspace

pytestmark = pytest.mark.slow
POLICY = IngestPolicy(resolution=8, channels=1)


def png(v, size=8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), v, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def image_folder(root, n=12, classes=("cat", "dog"), offset=0):
    for i in range(n):
        p = root / classes[i % len(classes)] / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png(10 * i + offset))
    return root


def settings_for(ws, **env):
    return load_settings({"GANPIPE_WORKSPACE": str(ws), "GANPIPE_HOME": str(ws / ".ganpipe"), **env})


def git(ws, *args):
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", *args], cwd=ws,
                          capture_output=True, text=True, check=True)


def snapshot(ws):
    """Everything an add may touch: catalog, dataset folders and .dvc files, the remote's objects."""
    files = sorted(p.relative_to(ws).as_posix() for p in (ws / "data").rglob("*") if p.is_file()
                   and ".catalog.lock" not in p.name)
    remote = sorted(p.name for p in (ws / ".ganpipe" / "dvc-remote").rglob("*") if p.is_file()) \
        if (ws / ".ganpipe" / "dvc-remote").exists() else []
    return files, remote, (ws / "data" / "catalog.yaml").read_text()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def test_add_versions_catalogues_and_is_idempotent(tmp_path):
    ws = make_workspace(tmp_path)
    s = settings_for(ws)
    src = image_folder(tmp_path / "pets")
    first = add(s, "pets", str(src), POLICY)
    assert first["created"] and first["version"] == "v1"
    again = add(s, "pets", str(src), POLICY)
    assert not again["created"] and again["version"] == "v1"  # identical input: the same version
    (src / "cat" / "extra.png").write_bytes(png(255))
    second = add(s, "pets", str(src), POLICY)
    assert second["created"] and second["version"] == "v2"

    entry = catalog.load(ws)["datasets"]["pets"]
    assert entry["latest"] == "v2" and set(entry["versions"]) == {"v1", "v2"}
    v1 = entry["versions"]["v1"]
    assert (v1["kind"], v1["count"], v1["classes"], v1["class_counts"]) == ("labelled", 12, ["cat", "dog"], [6, 6])
    assert (ws / v1["dvc_file"]).is_file() and (ws / "data/datasets/pets/.gitignore").read_text().split() == ["/v1", "/v2"]
    assert [(r["version"], r["latest"]) for r in listing(s)] == [("v1", False), ("v2", True)]
    st = subprocess.run([str(BIN / "dvc"), "status", "--cloud", "-r", "ganpipe-local", "--json"], cwd=ws,
                        env=env_for(ws), capture_output=True, text=True)
    assert json.loads(st.stdout or "{}") == {}, st.stdout + st.stderr  # both versions are on the remote
    out = show(s, "pets", "v1", tmp_path / "grid.png")
    assert out["count"] == 12 and Image.open(tmp_path / "grid.png").size[0] > 0

    cli = ganpipe(ws, "dataset", "list")
    assert cli.returncode == 0 and "pets@v2" in cli.stdout and "* pets@v2" in cli.stdout


def test_a_failed_add_leaves_nothing_behind(tmp_path, s3, monkeypatch):
    ws = make_workspace(tmp_path)
    s = settings_for(ws)
    add(s, "pets", str(image_folder(tmp_path / "pets")), POLICY)
    before = snapshot(ws)
    bad = image_folder(tmp_path / "bad", offset=3)
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(noise, "PNG")
    (bad / "cat" / "broken.png").write_bytes(noise.getvalue()[:-200])
    with pytest.raises(IngestError, match="broken.png: truncated"):
        add(s, "pets", str(bad), POLICY)  # the fail policy: one bad file refuses the add
    assert snapshot(ws) == before

    # a failure after the data was written and dvc-added (the S3 remote's bucket does not exist,
    # so the push fails): rolled back as well
    with monkeypatch.context() as m:
        for k, v in s3.env().items():
            m.setenv(k, v)
        broken = settings_for(ws, GANPIPE_DVC_REMOTE="s3gone", GANPIPE_DVC_REMOTE_URL="s3://no-such-bucket/dvc")
        with pytest.raises(Exception, match="push"):
            add(broken, "pets", str(image_folder(tmp_path / "new", offset=5)), POLICY)
    assert snapshot(ws) == before
    assert not (ws / "data/datasets/pets/v2").exists() and not (ws / "data/datasets/pets/v2.dvc").exists()

    cli = ganpipe(ws, "dataset", "add", "pets", str(bad), "--resolution", "8", "--channels", "1")
    assert cli.returncode == 2 and "cat/broken.png: truncated" in cli.stderr
    skip = ganpipe(ws, "dataset", "add", "pets", str(bad), "--resolution", "8", "--channels", "1", "--policy", "skip")
    assert skip.returncode == 0 and "1 rejected (truncated: 1)" in skip.stdout and "pets@v2: new version" in skip.stdout


def test_training_selects_name_or_version_and_refuses_unknown_ones(tmp_path):
    ws = make_workspace(tmp_path)
    s = settings_for(ws)
    add(s, "pets", str(image_folder(tmp_path / "pets")), POLICY)
    p = ws / "params.yaml"
    ok = load_config(p, ["data.name=pets@v1", "data.resolution=8"], write=False)
    assert (ok.data.dataset, ok.data.version) == ("pets", "v1")
    for override, message in [("data.name=pats", "unknown dataset 'pats' (known: pets, digits (built-in)"),
                              ("data.name=pets@v7", "dataset 'pets' has no version 'v7' (versions: v1)"),
                              ("data.name=../x", "data.name"),
                              ("data.name=pets", "pets@v1 is 8x8 with 1 channel(s); set data.resolution=8")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(p, [override], write=False)
    r = ganpipe(ws, "run", "data.name=pets@v3", timeout=120)  # the same check guards the flow
    assert r.returncode == 2 and "has no version 'v3'" in r.stderr

    pairs = image_folder(tmp_path / "pairs", n=8, classes=("a", "b"))  # a/0.png, b/1.png, ... no names shared
    for i in range(4):
        (pairs / "b" / f"{2 * i}.png").write_bytes(png(200 - i))  # now a/0 <-> b/0, a/2 <-> b/2, ...
        (pairs / "b" / f"{2 * i + 1}.png").unlink()
    out = add(s, "pairs", str(pairs), POLICY, kind="paired")
    entry = catalog.load(ws)["datasets"]["pairs"]["versions"][out["version"]]
    assert (entry["kind"], entry["domains"], entry["count"], entry["count_b"]) == ("paired", ["a", "b"], 4, 4)
    ds = load_prepared(Path(out["path"]))  # rows shuffled as pairs; the last tenth (at least one) held out
    assert ds.heldout == 1 and sorted(int(a.flat[0]) for a in ds.images) == [0, 20, 40, 60]
    for a, b in zip(ds.images, ds.images_b):  # a/<2i> (grey 20i) still pairs with b/<2i> (grey 200 - i)
        assert int(b.flat[0]) == 200 - int(a.flat[0]) // 20
    with pytest.raises(ConfigError, match="pairs@v1 is a paired dataset; dcgan trains on"):
        load_config(p, ["data.name=pairs", "data.resolution=8"], write=False)


def test_fresh_clone_pulls_every_version_bit_for_bit_and_prepare_uses_it(tmp_path):
    ws = make_workspace(tmp_path)
    s = settings_for(ws)
    add(s, "pets", str(image_folder(tmp_path / "pets")), POLICY)
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "add pets")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))
    assert not (clone / "data/datasets/pets/v1").exists()
    remote = str(ws / ".ganpipe" / "dvc-remote")
    env = {**env_for(clone), "GANPIPE_DVC_REMOTE_URL": remote}
    from flows.data.versioning import ensure_repo

    ensure_repo(settings_for(clone, GANPIPE_DVC_REMOTE_URL=remote))
    pull = subprocess.run([str(BIN / "dvc"), "pull", "-R", "data/datasets", "-r", "ganpipe-local"], cwd=clone, env=env,
                          capture_output=True, text=True)
    assert pull.returncode == 0, pull.stderr
    for f in (ws / "data/datasets/pets/v1").rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (clone / f.relative_to(ws)).read_bytes(), f

    # prepare in a clone that has not pulled: restores the version from the remote itself
    clone2 = tmp_path / "clone2"
    git(tmp_path, "clone", "-q", str(ws), str(clone2))
    params = clone2 / "params.yaml"
    params.write_text(params.read_text().replace("  name: digits", "  name: pets", 1))
    r = ganpipe(clone2, "stage", "prepare", GANPIPE_DVC_REMOTE_URL=remote)
    assert r.returncode != 0 and "set data.resolution=8" in r.stderr  # params say 16x16: refused before any work
    params.write_text(params.read_text().replace("  resolution: 16", "  resolution: 8", 1))
    r = ganpipe(clone2, "stage", "prepare", GANPIPE_DVC_REMOTE_URL=remote)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((clone2 / "data/prepared/pets/manifest.json").read_text())
    assert manifest["content_sha256"] == catalog.load(ws)["datasets"]["pets"]["versions"]["v1"]["content_sha256"]
    assert manifest["version"] == "v1"


def test_s3_source_and_s3_remote(tmp_path, s3, monkeypatch):
    import boto3

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="raw")
    client.create_bucket(Bucket="dvc")
    for i in range(8):
        client.put_object(Bucket="raw", Key=f"pets/{('cat', 'dog')[i % 2]}/{i}.png", Body=png(20 * i))
    client.put_object(Bucket="raw", Key="pets/../escape.png", Body=png(1))

    ws = make_workspace(tmp_path)
    s = settings_for(ws, GANPIPE_DVC_REMOTE="s3store", GANPIPE_DVC_REMOTE_URL="s3://dvc/store")
    with pytest.raises(IngestError, match="escape.png"):
        add(s, "pets", "s3://raw/pets/", POLICY)  # an unsafe key refuses the whole listing
    client.delete_object(Bucket="raw", Key="pets/../escape.png")
    out = add(s, "pets", "s3://raw/pets/", POLICY)
    assert out["created"] and catalog.load(ws)["datasets"]["pets"]["versions"]["v1"]["classes"] == ["cat", "dog"]
    stored = [o["Key"] for o in client.list_objects_v2(Bucket="dvc").get("Contents", [])]
    assert stored and all(k.startswith("store/") for k in stored)  # the version was pushed to the S3 remote

    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "pets from s3")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ws), str(clone))
    cs = settings_for(clone, GANPIPE_DVC_REMOTE="s3store", GANPIPE_DVC_REMOTE_URL="s3://dvc/store")
    version, folder, _ = restore(cs, "pets", None)
    assert version == "v1"
    for f in (ws / "data/datasets/pets/v1").rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (folder / f.relative_to(ws / "data/datasets/pets/v1")).read_bytes()
