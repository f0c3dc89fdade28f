"""`ganpipe deploy` on the real Ray Serve application: one embedded deployment for the module
(a noise model and an image-to-image model, untrained versions registered in a second each),
on 127.0.0.1 at a free port. Each endpoint, same bytes for the same request, every bad input
answered 4xx naming the field with the server still up, rollout and rollback on alias moves
under a steady request stream with no failed request, refusal of a non-finite version (tagged,
old one kept), and a killed replica replaced with a bounded number of failed requests."""
import base64
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from conftest import tiny_config
from workspace import ROOT, env_for, ganpipe
from servers import free_port

pytestmark = pytest.mark.slow
NOISE, IMAGE = "srv-blobs-cgan", "srv-pairs-pix2pix"
NOISE_CFG = tiny_config(model={"arch": "cgan"})
IMAGE_CFG = tiny_config(model={"arch": "pix2pix"}, data={"resolution": 16, "channels": 3})
ROLLOUT_S = 60.0  # a moved alias must serve within this (poll 0.5 s + load and check; seconds when idle)


def call(port: int, path: str, body: bytes | None = None, method: str | None = None, timeout: float = 30.0):
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method or
                                 ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def generate(port: int, name: str, payload: dict):
    return call(port, f"/v1/models/{name}:generate", json.dumps(payload).encode())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(port, settings, env) of a running deployment; `deploy down` afterwards."""
    from flows.ops.settings import load_settings
    from flows.ops.signing import signing_key
    from flows.serving.untrained import register_untrained

    ws = tmp_path_factory.mktemp("serving")
    for f in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / f, ws / f)
    env = env_for(ws, GANPIPE_WORKSPACE=str(ws))
    s = load_settings(env)
    register_untrained(s, NOISE, NOISE_CFG, seed=1)
    register_untrained(s, IMAGE, IMAGE_CFG, seed=1)
    signing_key(s.home)  # $GANPIPE_HOME/provenance.key: replicas sign their PNGs with it
    port = free_port()
    t = time.monotonic()
    up = ganpipe(ws, "deploy", "up", "--name", NOISE, "--name", IMAGE, "--port", str(port), "--poll-s", "0.5",
                 "--cpus", "0.25", "--max-n", "16", "--max-body", "65536", timeout=400, GANPIPE_WORKSPACE=str(ws))
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"deploy up: {time.monotonic() - t:.1f} s")
    assert f"{NOISE}  version 1" in up.stdout
    yield port, s, ws
    state = json.loads((s.home / "serve" / "state.json").read_text())
    down = ganpipe(ws, "deploy", "down", timeout=120, GANPIPE_WORKSPACE=str(ws))
    assert down.returncode == 0, down.stderr
    with pytest.raises(OSError):
        call(port, "/healthz", timeout=2)
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)


def test_serve_load_benchmark_runs_against_the_deployment(served, tmp_path):
    """benchmarks/serve_load.py at tiny sizes on this module's deployment (its own `deploy up` costs a minute)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.serve_load import main

    out = main(["--attach", str(served[0]), "--name", NOISE, "--seconds", "1", "--sizes", "1",
                "--out", str(tmp_path)])
    assert out["points"][0]["ok"] > 0 and "| 1 |" in (tmp_path / "serve_load.md").read_text()


def test_status_names_versions_fingerprints_and_replicas(served):
    port, s, ws = served
    r = ganpipe(ws, "deploy", "status", "--json", timeout=120, GANPIPE_WORKSPACE=str(ws))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["healthy"] and out["port"] == port and out["mode"] == "embedded"
    assert {(m["name"], m["version"], m["fingerprint"]) for m in out["models"]} == \
        {(NOISE, "1", "untrained-1"), (IMAGE, "1", "untrained-1")}
    assert {d: v["status"] for d, v in out["deployments"].items()} == \
        {"Ingress": "HEALTHY", f"model-{NOISE}": "HEALTHY", f"model-{IMAGE}": "HEALTHY"}
    assert out["deployments"][f"model-{NOISE}"]["replicas"] == {"RUNNING": 1}


def test_up_refuses_a_model_without_champion_and_a_second_deployment(served):
    port, s, ws = served
    r = ganpipe(ws, "deploy", "up", "--name", "no-such-model", "--port", str(port), timeout=120,
                GANPIPE_WORKSPACE=str(ws))
    assert r.returncode == 2 and "--name no-such-model: no version holds the 'champion' alias" in r.stderr
    r = ganpipe(ws, "deploy", "up", "--name", NOISE, timeout=120, GANPIPE_WORKSPACE=str(ws))
    assert r.returncode == 2 and f"already serving {NOISE}, {IMAGE} on port {port}" in r.stderr


def test_health_and_models(served):
    port = served[0]
    status, _, body = call(port, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "models": {NOISE: "1", IMAGE: "1"}}
    status, _, body = call(port, "/v1/models")
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert models[NOISE] == {"name": NOISE, "version": "1", "family": "cgan", "metric": "fid", "value": "101.0",
                             "fingerprint": "untrained-1",
                             "inputs": {"kind": "noise", "classes": 4, "controls": "class"}}
    assert models[IMAGE]["inputs"] == {"kind": "image", "channels": 3, "resolution": 16, "directions": []}


def test_generate_is_deterministic_and_carries_provenance(served, tmp_path):
    port = served[0]
    a = generate(port, NOISE, {"n": 6, "seed": 3, "class": 2})
    b = generate(port, NOISE, {"seed": 3, "class": 2, "n": 6})
    c = generate(port, NOISE, {"n": 6, "seed": 4, "class": 2})
    assert a[0] == b[0] == c[0] == 200 and a[1]["content-type"] == "image/png" and a[1]["x-model-version"] == "1"
    assert a[2] == b[2] != c[2]
    from mlflow import MlflowClient

    from gan_core.images import grid_fields

    mv = MlflowClient(served[1].mlflow_uri).get_model_version(NOISE, "1")
    assert mv.run_id  # the run the served PNG must name
    lineage = {"model_name": NOISE, "model_version": "1", "mlflow_run_id": mv.run_id,
               "dataset_sha256": mv.tags.get("dataset.content_sha256"), "checkpoint_sha256": mv.tags.get("checkpoint.sha256")}
    with Image.open(io.BytesIO(a[2])) as im:
        assert json.loads(im.text["ganpipe"]) == {"model": f"models:/{NOISE}/1", "served_version": "1", "n": 6,
                                                  "seed": 3, "class": 2, "fingerprint": "untrained-1", "format": "png",
                                                  **lineage, **grid_fields(6, 3)}  # how the 3 x 2 cells map to the 6 latents
        assert im.size == (3 * 9 * 4 + 4, 2 * 9 * 4 + 4)  # 3 columns x 2 rows of 8 px, padded, x4
    from flows.cli.provenance import inspect
    from flows.ops.signing import verifying_key

    (tmp_path / "a.png").write_bytes(a[2])  # signed by the replica with the key under GANPIPE_HOME
    assert inspect(tmp_path / "a.png", verifying_key(served[1].home, env={}))["status"] == "verified"
    import numpy as np

    status, headers, body = generate(port, NOISE, {"n": 2, "seed": 3, "format": "npz"})
    assert status == 200 and generate(port, NOISE, {"n": 2, "seed": 3, "format": "npz"})[2] == body
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        assert z["images"].shape == (2, 1, 8, 8) and np.isfinite(z["images"]).all()


def _png_b64(size: int, mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, (size, size), (10, 200, 30) if mode == "RGB" else 100).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_image_to_image(served):
    port = served[0]
    status, headers, body = generate(port, IMAGE, {"image": _png_b64(32)})
    assert status == 200 and headers["x-model-version"] == "1"
    with Image.open(io.BytesIO(body)) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert generate(port, IMAGE, {"image": _png_b64(32)})[2] == body


BAD = [  # (model, body bytes, status, field)
    (NOISE, b"{not json", 400, "body"), (NOISE, b"[1]", 400, "body"), (NOISE, b'{"n": "4"}', 422, "n"),
    (NOISE, b'{"n": 0}', 422, "n"), (NOISE, b'{"n": 17}', 422, "n"), (NOISE, b'{"class": 4}', 422, "class"),
    (NOISE, b'{"seed": 1.5}', 422, "seed"), (NOISE, b'{"truncation": 0.5}', 422, "truncation"),
    (NOISE, b'{"format": "jpeg"}', 422, "format"), (NOISE, b'{"text": "a cat"}', 422, "text"),
    ("no-such-model", b"{}", 404, "model"), (NOISE, json.dumps({"pad": "x" * 70000}).encode(), 413, "body"),
    (IMAGE, b"{}", 422, "image"), (IMAGE, json.dumps({"image": "@@@"}).encode(), 422, "image"),
    (IMAGE, json.dumps({"image": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()}).encode(), 422, "image"),
]


def test_bad_inputs_are_named_and_the_server_stays_up(served):
    port = served[0]
    for name, body, status, field in BAD:
        got, headers, answer = call(port, f"/v1/models/{name}:generate", body)
        assert (got, json.loads(answer)["error"]["field"]) == (status, field), (name, body[:60], answer)
        assert headers["content-type"] == "application/json"
    assert call(port, f"/v1/models/{NOISE}:generate")[0] == 405  # GET
    assert call(port, "/v2/anything")[0] == 404
    assert call(port, "/healthz")[0] == 200
    assert generate(port, NOISE, {"n": 1})[0] == 200


class Stream:
    """Requests back to back from `threads` threads until stopped: (status, version) of each."""

    def __init__(self, port: int, threads: int = 2):
        self.port, self.results, self.stop = port, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            try:
                status, headers, _ = generate(self.port, NOISE, {"n": 4, "seed": i})
                out = (status, headers.get("x-model-version"))
            except OSError as e:
                out = (type(e).__name__, None)
            with self.lock:
                self.results.append(out)

    def versions(self) -> list:
        with self.lock:
            return [v for _, v in self.results]

    def wait_for(self, version: str, timeout: float, after: int = 5) -> float:
        """Seconds until `after` responses came from `version` (fails past timeout)."""
        t = time.monotonic()
        while self.versions()[-after:] != [version] * after:
            assert time.monotonic() - t < timeout, f"version {version} not served within {timeout} s"
            self.stop.wait(0.1)  # polling the responses collected so far
        return time.monotonic() - t

    def close(self) -> list:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.results


def test_rollout_and_rollback_follow_the_alias_without_a_failed_request(served):
    from flows.registry.tracking import CHAMPION, client
    from flows.serving.untrained import register_untrained

    port, s, _ = served
    stream = Stream(port)
    try:
        stream.wait_for("1", 30)
        assert register_untrained(s, NOISE, NOISE_CFG, seed=2) == "2"  # moves the alias
        switched = stream.wait_for("2", ROLLOUT_S)
        assert client(s.mlflow_uri).get_registered_model(NOISE).tags["serving.version"] == "2"
        client(s.mlflow_uri).set_registered_model_alias(NOISE, CHAMPION, "1")  # rollback
        back = stream.wait_for("1", ROLLOUT_S)
    finally:
        results = stream.close()
    print(f"rollout: {switched:.1f} s, rollback: {back:.1f} s, {len(results)} requests")
    assert {status for status, _ in results} == {200}, [r for r in results if r[0] != 200][:5]
    versions = [v for _, v in results]
    first2, last2 = versions.index("2"), len(versions) - 1 - versions[::-1].index("2")
    assert set(versions[:first2]) == {"1"} and set(versions[last2 + 1:]) == {"1"}


def test_a_non_finite_version_is_refused_and_the_old_one_keeps_serving(served):
    from flows.registry.tracking import client
    from flows.serving.rollout import REFUSED_TAG
    from flows.serving.untrained import register_untrained

    port, s, _ = served
    c = client(s.mlflow_uri)
    stream = Stream(port, threads=1)
    try:
        bad = register_untrained(s, NOISE, NOISE_CFG, seed=3, nan=True)
        t = time.monotonic()
        while REFUSED_TAG not in c.get_model_version(NOISE, bad).tags:
            assert time.monotonic() - t < ROLLOUT_S, "the broken version was not refused"
            stream.stop.wait(0.2)  # polling the registry for the tag
        stream.wait_for("1", 10, after=3)
    finally:
        results = stream.close()
    assert "non-finite output" in c.get_model_version(NOISE, bad).tags[REFUSED_TAG]
    assert {status for status, _ in results} == {200} and bad not in {v for _, v in results}
    assert json.loads(call(port, "/healthz")[2])["models"][NOISE] == "1"
    assert c.get_registered_model(NOISE).tags["serving.version"] == "1"
    from flows.registry.compare import collect, render_table

    table = render_table(collect(c, NOISE))
    assert f"served: {NOISE} v1 (ganpipe deploy)" in table.splitlines()


def test_a_killed_replica_is_replaced_with_few_failed_requests(served, monkeypatch):
    import ray

    port, s, _ = served
    state = json.loads((s.home / "serve" / "state.json").read_text())
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the embedded instance was started
    ray.init(address=state["ray_address"], logging_level="ERROR", log_to_driver=False)
    try:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if f"model-{NOISE}" in a["name"] and "REPLICA" in a["name"]]
        assert len(names) == 1, names
        stream = Stream(port)
        try:
            stream.wait_for("1", 30, after=2)
            ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
            t = time.monotonic()
            n_before = len(stream.results)
            while True:  # recovered: 5 successes in a row after the kill
                tail = [st for st, _ in stream.results[n_before:]][-5:]
                if len(tail) == 5 and set(tail) == {200}:
                    break
                assert time.monotonic() - t < 120, f"no replica answered within 120 s of the kill: {tail}"
                stream.stop.wait(0.2)
            recovered = time.monotonic() - t
        finally:
            results = stream.close()
    finally:
        ray.shutdown()
    failed = [st for st, _ in results if st != 200]
    print(f"replica kill: {len(failed)} failed of {len(results)}, recovered in {recovered:.1f} s")
    assert len(failed) <= 4, failed  # at most the requests in flight on the killed replica (2 threads)
    # the champion is the refused version: the replacement serves what was served before, not nothing
    assert {v for st, v in results if st == 200} == {"1"}
    assert json.loads(call(port, "/healthz")[2])["models"][NOISE] == "1"
