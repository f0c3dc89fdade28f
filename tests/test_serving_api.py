"""The serving API's pure side (flows/serving/api.py): routes, body limits, validation of every field
against what a model takes (errors name the field), and encoders whose bytes depend only on content."""
import base64
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from flows.serving import api
from flows.serving.api import ApiError, Limits, parse_generate, parse_json, route

NOISE = {"kind": "noise", "classes": 4, "controls": "class"}
UNCOND = {"kind": "noise", "classes": 0, "controls": ""}
STYLE = {"kind": "style", "classes": 0, "controls": "", "truncation": [0.0, 2.0]}
IMAGE = {"kind": "image", "channels": 3, "resolution": 8, "directions": ["a2b", "b2a"]}
LIMITS = Limits(max_n=16, max_body=2048)


def _err(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


def _png(size=(8, 8), mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_routes():
    assert route("GET", "/healthz") == ("/healthz", None)
    assert route("GET", "/v1/models/") == ("/v1/models", None)
    assert route("POST", "/v1/models/ganpipe-blobs-dcgan:generate") == ("generate", "ganpipe-blobs-dcgan")
    assert (_err(route, "GET", "/v1/models/m:generate").status, _err(route, "POST", "/healthz").status) == (405, 405)
    assert _err(route, "GET", "/v1/models/a/b:generate").status == 404
    assert _err(route, "GET", "/admin").field == "path"


@pytest.mark.parametrize("body,field,status", [
    (b"{", "body", 400), (b"\xff\xfe", "body", 400), (b"[1, 2]", "body", 400), (b'"x"', "body", 400),
    (b'{"n": NaN}', "body", 400), (b"x" * 2049, "body", 413)])
def test_malformed_or_oversized_bodies(body, field, status):
    e = _err(parse_json, body, 2048)
    assert (e.field, e.status) == (field, status)
    assert json.loads(e.to_json())["error"]["field"] == field


def test_declared_length_is_refused_before_reading():
    assert _err(api.check_length, "5000", 2048).status == 413
    assert _err(api.check_length, "lots", 2048).field == "content-length"
    api.check_length(None, 2048)
    api.check_length("10", 2048)


def test_empty_body_means_defaults():
    req = parse_generate(parse_json(b"", 2048), NOISE, LIMITS)
    assert (req.n, req.seed, req.label, req.format) == (1, 0, None, "png")


@pytest.mark.parametrize("payload,inputs,field", [
    ({"n": 0}, NOISE, "n"), ({"n": 17}, NOISE, "n"), ({"n": "3"}, NOISE, "n"), ({"n": 2.0}, NOISE, "n"),
    ({"n": True}, NOISE, "n"), ({"seed": -1}, NOISE, "seed"), ({"seed": "a"}, NOISE, "seed"),
    ({"class": 4}, NOISE, "class"), ({"class": -1}, NOISE, "class"), ({"class": 0}, UNCOND, "class"),
    ({"class": "1"}, NOISE, "class"), ({"truncation": 0.7}, NOISE, "truncation"),
    ({"truncation": 3}, STYLE, "truncation"), ({"truncation": "x"}, STYLE, "truncation"),
    ({"class": 1}, STYLE, "class"), ({"image": _png()}, NOISE, "image"), ({"direction": "a2b"}, NOISE, "direction"),
    ({"format": "gif"}, NOISE, "format"), ({"colour": 1}, NOISE, "colour"), ({"text": "a cat"}, NOISE, "text"),
    ({}, IMAGE, "image"), ({"image": _png(), "direction": "up"}, IMAGE, "direction"),
    ({"image": _png()}, IMAGE, "direction"), ({"image": _png(), "direction": "a2b", "n": 2}, IMAGE, "n"),
    ({"image": "not base64!", "direction": "a2b"}, IMAGE, "image"),
    ({"image": base64.b64encode(b"GIF89a....").decode(), "direction": "a2b"}, IMAGE, "image"),
    ({"image": _png()[:40], "direction": "a2b"}, IMAGE, "image"),
    ({"image": _png((600, 8)), "direction": "a2b"}, IMAGE, "image"),
    ({"image": 7, "direction": "a2b"}, IMAGE, "image"), ({"image": _png(), "class": 1}, IMAGE, "class")])
def test_bad_fields_are_named(payload, inputs, field):
    e = _err(parse_generate, payload, inputs, LIMITS)
    assert e.field == field and 400 <= e.status < 500, e


def test_good_requests():
    assert parse_generate({"n": 16, "seed": 5, "class": 3, "format": "npz"}, NOISE, LIMITS) == \
        api.GenerateRequest(n=16, seed=5, label=3, format="npz")
    assert parse_generate({"truncation": 0.7}, STYLE, LIMITS).truncation == 0.7
    req = parse_generate({"image": _png((12, 10), "L"), "direction": "b2a"}, IMAGE, LIMITS)
    assert req.image.shape == (1, 3, 10, 12) and req.direction == "b2a"
    assert -1.0 <= float(req.image.min()) <= float(req.image.max()) <= 1.0


def test_png_and_npz_bytes_depend_only_on_content():
    from gan_core.images import make_grid

    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prov = {"seed": 1, "model": "models:/m/2", "served_version": "2"}
    a = api.encode_png(make_grid(images, api.grid_columns(5)), prov)
    b = api.encode_png(make_grid(images.clone(), api.grid_columns(5)), dict(reversed(list(prov.items()))))
    assert a == b
    assert json.loads(Image.open(io.BytesIO(a)).text["ganpipe"]) == prov
    n1 = api.encode_npz(images.numpy(), prov)
    n2 = api.encode_npz(images.numpy().copy(), dict(reversed(list(prov.items()))))
    assert n1 == n2  # np.savez would stamp the time into the zip
    with np.load(io.BytesIO(n1), allow_pickle=False) as z:
        assert np.array_equal(z["images"], images.numpy()) and json.loads(str(z["provenance"])) == prov
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zipfile.ZipFile(io.BytesIO(n1)).infolist())


def test_batched_generation_matches_one_by_one():
    """serve.batch on GPU replicas runs several requests in one forward pass: each request's images
    are those it gets alone (here on CPU)."""
    from conftest import tiny_config
    from flows.serving.model import Served, generate, generate_many, inputs_of
    from gan_core.train import build_state

    torch.manual_seed(0)
    state = build_state(tiny_config(model={"arch": "cgan"}), n_classes=4)
    G = state.family.infer(state.G_ema.eval())
    served = Served("m", "1", G, "cgan", "fid", "1", "fp", inputs_of(G))
    reqs = [api.GenerateRequest(n=3, seed=1), api.GenerateRequest(n=2, seed=7, label=2), api.GenerateRequest(n=1)]
    for alone, together in zip([generate(served, r) for r in reqs], generate_many(served, reqs)):
        assert torch.allclose(alone, together, atol=1e-5)


def test_the_run_summary_names_the_served_version():
    from flows.stages.summary import run_summary

    cfg = {"data": {"name": "digits"}, "model": {"arch": "dcgan", "loss": "nonsat"}, "train": {"num_workers": 2}}
    training = {"meta": {"dataset_sha256": "d" * 64, "params_sha256": "p" * 64, "git_commit": "c0ffee"},
                "step": 40, "images_seen": 1280, "run_name": "r1"}
    evaluation = {"metric": "fid_300", "metrics": {"fid_300": 12.5}, "fingerprint": {"id": "fp1"}}
    reg = {"model_name": "m", "version": "8", "champion": True, "reason": "beats v7"}
    links = {"run": "runs:/r", "model": "models:/m/8"}
    assert "Served by `ganpipe deploy`: v7" in run_summary(cfg, training, evaluation, reg, links, served="7")
    assert "Served by" not in run_summary(cfg, training, evaluation, reg, links)


def test_the_rayservice_manifest_builds_the_application():
    """infra/kuberay/rayservice.yaml: the Serve config's import path and args build the application
    (no cluster), one model replica per GPU fits the worker group, and image and Ray match the cluster."""
    from pathlib import Path

    import yaml

    from flows.serving.app import ServeConfig, app_builder

    root = Path(__file__).resolve().parents[1] / "infra" / "kuberay"
    svc = yaml.safe_load((root / "rayservice.yaml").read_text())
    cluster = yaml.safe_load((root / "raycluster.yaml").read_text())
    assert (svc["apiVersion"], svc["kind"]) == ("ray.io/v1", "RayService")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (application,) = serve_cfg["applications"]
    assert application["import_path"] == "flows.serving.app:app_builder"
    args = application["args"]
    assert set(args) <= set(ServeConfig.__dataclass_fields__)
    app = app_builder({**args, "tracking_uri": "http://mlflow:5000"})
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="--min-replicas"):
        app_builder({**args, "tracking_uri": "x", "max_replicas": None})
    spec = svc["spec"]["rayClusterConfig"]
    assert spec["rayVersion"] == cluster["spec"]["rayVersion"]
    (group,) = spec["workerGroupSpecs"]
    gpus = int(group["rayStartParams"]["num-gpus"])
    for c in group["template"]["spec"]["containers"]:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert c["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert args["gpus"] == 1 and args["max_replicas"] <= gpus * group["maxReplicas"]  # one replica per GPU
