"""The disk filling up while a checkpoint, the published candidate or a dataset version is written.

A full disk is simulated with a file-size limit (RLIMIT_FSIZE, applied in a child process right
before the write; SIGXFSZ is ignored, so write() fails with EFBIG, "File too large", as it fails
with ENOSPC on a full disk). It needs no privilege and no special filesystem. Each case checks that
the error names what was being written and why, the previous version is still the one in place and
verifies, and no temporary file or folder is left behind.
"""
import io
import json
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from gan_core.checkpoint import load_checkpoint, rng_state, save_checkpoint, to_checkpoint
from gan_core.train import build_state

LIMIT = 2048  # bytes: room for a sidecar or a record, not for a checkpoint or a dataset's images

# run in the child: imports first (unlimited), then the write under the limit; the outcome as JSON
CHILD = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing the process
{setup}
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    {write}
except Exception as e:
    print(json.dumps({{"type": type(e).__name__, "message": str(e)}}))
else:
    print("null")
"""


def write_under_limit(setup: str, write: str, *args: str) -> dict:
    """The exception (type, message) that `write` raised under the file-size limit."""
    code = CHILD.format(setup=setup, write=write, limit=LIMIT)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    err = json.loads(out.stdout.strip().splitlines()[-1])
    assert err is not None, "the write succeeded under the file-size limit: the test proves nothing"
    return err


def checkpoint_at(step: int) -> dict:
    cfg = tiny_config()
    state = build_state(cfg)
    state.step = step
    return to_checkpoint(state, cfg, [rng_state()])


def assert_out_of_room(err: dict, path) -> None:
    assert err["type"] == "DiskFullError", err
    assert err["message"].startswith(f"{path}: not written: File too large (a file-size limit was reached"), err


def test_a_full_disk_keeps_the_previous_checkpoint_and_its_sidecar(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, checkpoint_at(2))
    save_checkpoint(tmp_path / "next.pt", checkpoint_at(4))
    assert (tmp_path / "next.pt").stat().st_size > LIMIT  # the new one cannot fit; its sidecar can
    err = write_under_limit("from gan_core.checkpoint import load_checkpoint, save_checkpoint",
                            "save_checkpoint(sys.argv[2], load_checkpoint(sys.argv[1]))",
                            str(tmp_path / "next.pt"), str(path))
    assert_out_of_room(err, path)
    assert load_checkpoint(path)["step"] == 2  # the old pair still matches: not replaced, not torn
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "checkpoint.pt.json"]


def test_a_full_disk_keeps_the_previous_candidate(tmp_path):
    from flows.ops.settings import load_settings
    from flows.stages.train import publish_candidate

    env = {"GANPIPE_WORKSPACE": str(tmp_path / "ws"), "GANPIPE_HOME": str(tmp_path / "home")}
    for step in (2, 4):
        save_checkpoint(tmp_path / f"ray/{step}/checkpoint.pt", checkpoint_at(step))
    first = publish_candidate(load_settings(env), tmp_path / "ray/2/checkpoint.pt", checkpoint_at(2), "run", None, "r")
    err = write_under_limit(
        "from pathlib import Path\nfrom flows.ops.settings import load_settings\n"
        "from flows.stages.train import publish_candidate\nfrom gan_core.checkpoint import load_checkpoint\n"
        f"s, f = load_settings({env!r}), Path(sys.argv[1])",
        "publish_candidate(s, f, load_checkpoint(f), 'run', None, 'r')", str(tmp_path / "ray/4/checkpoint.pt"))
    candidate = tmp_path / "ws" / "models" / "candidate"
    assert_out_of_room(err, candidate)
    assert load_checkpoint(candidate / "checkpoint.pt")["step"] == 2
    assert json.loads((candidate / "train.json").read_text())["checkpoint_sha256"] == first["checkpoint_sha256"]
    assert [p.name for p in candidate.parent.iterdir()] == ["candidate"]  # no .candidate.* temporaries


def png_folder(root, n, offset=0):
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16), (7 * i + offset) % 256, np.uint8)).save(buf, "PNG")
        (root / ("a", "b")[i % 2]).mkdir(parents=True, exist_ok=True)
        (root / ("a", "b")[i % 2] / f"{i}.png").write_bytes(buf.getvalue())
    return root


def file_size_limit():
    """preexec_fn: the `ganpipe` process (and whatever it starts) may write no file past LIMIT bytes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
def test_a_full_disk_during_dataset_add_keeps_the_previous_version_latest(tmp_path):
    from flows.data import catalog
    from flows.data.datasets import add, restore
    from flows.ops.settings import load_settings
    from gan_core.data import load_prepared
    from gan_core.ingest.policy import IngestPolicy
    from workspace import BIN, env_for, make_workspace

    ws = make_workspace(tmp_path)
    settings = load_settings({"GANPIPE_WORKSPACE": str(ws), "GANPIPE_HOME": str(ws / ".ganpipe")})
    add(settings, "pets", str(png_folder(tmp_path / "v1", 12)), IngestPolicy(resolution=16, channels=1))
    before = sorted(p.relative_to(ws) for p in (ws / "data").rglob("*") if p.name != ".catalog.lock")

    cli = subprocess.run([str(BIN / "ganpipe"), "dataset", "add", "pets", str(png_folder(tmp_path / "v2", 24, 3)),
                          "--resolution", "16", "--channels", "1"], cwd=ws, env=env_for(ws), capture_output=True,
                         text=True, timeout=300, stdin=subprocess.DEVNULL, preexec_fn=file_size_limit)
    assert cli.returncode == 2, cli.stderr  # 24 images of 16x16: images.npy is 6 KiB, past the limit
    assert cli.stderr.startswith(f"error: {ws / 'data/datasets/pets/v2'}: not written: File too large"), cli.stderr
    assert "Traceback" not in cli.stderr
    assert catalog.load(ws)["datasets"]["pets"]["latest"] == "v1"
    version, folder, _ = restore(settings, "pets", None)
    assert version == "v1" and load_prepared(folder, verify=True).images.shape == (12, 1, 16, 16)
    after = sorted(p.relative_to(ws) for p in (ws / "data").rglob("*") if p.name != ".catalog.lock")
    assert after == before  # no v2 folder, no v2.dvc, no .v2.* temporaries
