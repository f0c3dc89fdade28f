"""The HTTP API's pure side: routes, request bodies parsed and validated against what a model
takes, and responses encoded to bytes that depend only on the model and the request (the same
seed and inputs give the same bytes). Errors are ApiError: a 4xx status and the field at fault."""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass

import numpy as np

MAX_N = 64  # images per request by default: a 64-image grid is ~1 s on one CPU thread for small models
MAX_BODY = 4 * 2**20  # bytes of a request body by default (an uploaded image, base64, fits)
MAX_IMAGE_SIDE = 512  # pixels of an uploaded image's larger side: bounds the work one request can ask for
FIELDS = {"n", "seed", "class", "truncation", "image", "direction", "format"}
FORMATS = ("png", "npz")
GENERATE = re.compile(r"^/v1/models/(?P<name>[^/:]+):generate$")


@dataclass(frozen=True)
class ApiError(Exception):
    status: int
    field: str  # the request part at fault: a JSON field, "body", "model" or "path"
    message: str

    def to_json(self) -> bytes:
        return json.dumps({"error": {"field": self.field, "message": self.message}}, sort_keys=True).encode()


@dataclass(frozen=True)
class Limits:
    max_n: int = MAX_N
    max_body: int = MAX_BODY


@dataclass(frozen=True)
class GenerateRequest:
    n: int = 1
    seed: int = 0
    label: int | None = None  # `class` in JSON
    truncation: float | None = None
    image: object = None  # (1, C, H, W) float tensor in [-1, 1] for image-to-image models
    direction: str | None = None
    format: str = "png"

    def provenance(self) -> dict:
        """What the request asked for, as the PNG text chunk records it."""
        out = {"seed": self.seed, "n": self.n, "format": self.format}
        if self.label is not None:
            out["class"] = self.label
        if self.truncation is not None:
            out["truncation"] = self.truncation
        if self.direction is not None:
            out["direction"] = self.direction
        return out


def route(method: str, path: str) -> tuple[str, str | None]:
    """(endpoint, model name) for a request line; ApiError 404/405 otherwise."""
    path = path.rstrip("/") or "/"
    if path in ("/healthz", "/v1/models"):
        if method != "GET":
            raise ApiError(405, "method", f"{path} takes GET, not {method}")
        return path, None
    m = GENERATE.match(path)
    if m:
        if method != "POST":
            raise ApiError(405, "method", f"{path} takes POST, not {method}")
        return "generate", m.group("name")
    raise ApiError(404, "path", f"no such endpoint: {path} (GET /healthz, GET /v1/models, "
                                "POST /v1/models/NAME:generate)")


def check_length(declared: str | None, limit: int) -> None:
    """Refuse by Content-Length before reading a body over the limit."""
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, "content-length", f"not an integer: {declared!r}") from None
    if size > limit:
        raise ApiError(413, "body", f"{size} bytes is over the limit of {limit}")


def parse_json(body: bytes, limit: int) -> dict:
    if len(body) > limit:
        raise ApiError(413, "body", f"{len(body)} bytes is over the limit of {limit}")
    try:
        payload = json.loads(body.decode("utf-8") or "{}", parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise ApiError(400, "body", f"not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "body", f"must be a JSON object, got {type(payload).__name__}")
    return payload


def _no_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def _int(payload: dict, key: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    v = payload.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(422, key, f"must be an integer, got {json.dumps(v)[:40]}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(422, key, f"must be in {lo}..{hi}, got {v}")
    return v


def parse_generate(payload: dict, inputs: dict, limits: Limits) -> GenerateRequest:
    """Validate a generate body against what the model takes (`inputs`, from model.inputs_of)."""
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        raise ApiError(422, unknown[0], f"unknown field (accepted: {', '.join(sorted(FIELDS))})")
    fmt = payload.get("format", "png")
    if fmt not in FORMATS:
        raise ApiError(422, "format", f"must be one of {', '.join(FORMATS)}, got {json.dumps(fmt)[:40]}")
    seed = _int(payload, "seed", 0, 0, 2**63 - 1)
    kind = inputs["kind"]
    if kind == "image":
        return _image_request(payload, inputs, seed, fmt)
    for key in ("image", "direction"):
        if key in payload:
            raise ApiError(422, key, "this model generates from noise and takes no input image")
    n = _int(payload, "n", 1, 1, limits.max_n)
    label = _int(payload, "class", None)
    if label is not None and not 0 <= label < inputs["classes"]:
        raise ApiError(422, "class", f"{label} is not a class of this model " +
                       ("(it has none)" if inputs["classes"] == 0 else f"(valid: 0..{inputs['classes'] - 1})"))
    psi = payload.get("truncation")
    if psi is not None:
        if kind != "style":
            raise ApiError(422, "truncation", "only style-based models (stylegan) take a truncation")
        if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not 0.0 <= psi <= 2.0:
            raise ApiError(422, "truncation", f"must be a number in 0..2, got {json.dumps(psi)[:40]}")
        psi = float(psi)
    if kind == "style" and label is not None:
        raise ApiError(422, "class", "style-based models take no class")
    return GenerateRequest(n=n, seed=seed, label=label, truncation=psi, format=fmt)


def _image_request(payload: dict, inputs: dict, seed: int, fmt: str) -> GenerateRequest:
    for key in ("class", "truncation"):
        if key in payload:
            raise ApiError(422, key, "image-to-image models take an `image`, not a class or truncation")
    _int(payload, "n", 1, 1, 1)  # one input image, one output
    if "image" not in payload:
        raise ApiError(422, "image", "required: a base64-encoded PNG/JPEG/BMP/WebP image")
    directions = inputs["directions"]
    direction = payload.get("direction")
    if directions and direction not in directions:
        raise ApiError(422, "direction", f"must be one of {', '.join(directions)}, got {json.dumps(direction)[:40]}")
    if not directions and direction is not None:
        raise ApiError(422, "direction", "this model translates one way only")
    image = decode_image(payload["image"], inputs["channels"])
    return GenerateRequest(n=1, seed=seed, image=image, direction=direction, format=fmt)


def decode_image(value, channels: int):
    """A base64 image through the checks `ganpipe dataset add` applies (format allow-list,
    decompression-bomb limit, modes) and a size bound; (1, C, H, W) float in [-1, 1]."""
    import torch

    from gan_core.ingest.decode import load_pixels, open_checked, to_target_mode
    from gan_core.ingest.policy import IngestPolicy
    from gan_core.ingest.report import Rejected

    if not isinstance(value, str):
        raise ApiError(422, "image", "must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(422, "image", f"not base64: {e}") from None
    policy = IngestPolicy(channels=channels, max_pixels=MAX_IMAGE_SIDE ** 2)
    try:
        im, _ = to_target_mode(load_pixels(open_checked(data, policy)), policy)
    except Rejected as r:
        raise ApiError(422, "image", f"cannot be read as an image ({r.reason}: {r.detail})") from None
    if max(im.size) > MAX_IMAGE_SIDE:
        raise ApiError(422, "image", f"{im.size[0]}x{im.size[1]} is larger than {MAX_IMAGE_SIDE} px a side")
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr))[None].float().div_(127.5).sub_(1.0)


# ---- responses -----------------------------------------------------------------------------------
def grid_columns(n: int) -> int:
    return int(math.ceil(math.sqrt(n)))


def encode_png(array: np.ndarray, provenance: dict, key: bytes | None = None) -> bytes:
    from gan_core.images import png_bytes

    return png_bytes(array, provenance, key)  # signed where the replica has a key (flows.ops.signing.serving_key)


def encode_npz(images: np.ndarray, provenance: dict) -> bytes:
    """float32 `images` (n, C, H, W) in [-1, 1] and `provenance` (JSON) in an .npz whose bytes
    depend only on the content: np.savez stamps each member with the current time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for key, arr in (("images", np.ascontiguousarray(images, dtype=np.float32)),
                         ("provenance", np.array(json.dumps(provenance, sort_keys=True)))):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            z.writestr(info, member.getvalue())
    return buf.getvalue()


def error_response(e: ApiError) -> tuple[int, bytes]:
    return e.status, e.to_json()
