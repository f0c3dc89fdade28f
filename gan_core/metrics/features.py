"""Feature backbones for super-resolution's content loss (SRGAN's "VGG loss"), in plain PyTorch.

`load_features(name)` -> (module, resolved name, weights sha256). The module maps images
(B, 1 or 3, H, W) in [-1, 1] to feature maps; the loss is the MSE between the maps of G's output and
of the real high-resolution image. Every backbone is frozen (eval mode, requires_grad False) and
deterministic, and its name and hash say exactly which one a run used (record them with the run).

- "vgg19": torchvision's VGG19 `features` up to relu5_4 (SRGAN's VGG54: the 4th conv of the 5th
  block, after its ReLU, before the last max pool), ImageNet mean/std normalisation, grey repeated to
  RGB, features divided by 12.75 (Ledig et al. 2017's rescaling, which brings the VGG loss to the
  scale of a pixel MSE). Weights: torchvision's `vgg19-dcbb9e9d.pth` from $GANPIPE_VGG19_WEIGHTS or
  ~/.cache/torch/hub/checkpoints/, never downloaded (no download is possible on an offline box, and a
  training run must not depend on the network). The module names follow torchvision (`features.N`),
  so that file's `features.*` keys load strictly.
- "random-conv-s0": the fallback when no VGG19 file is present: four 3x3 conv + ReLU layers with a
  2x average pool after the second, their weights drawn from a fixed seed (0) with their own
  generator. Random conv features are a known perceptual proxy (He, Wang & Hopcroft 2016 invert and
  synthesise images with random-weight VGGs; Ulyanov's random-filter texture synthesis): they
  compare local structure at several scales, which is what the content loss needs, and they need no
  file. Weaker than VGG's learned features, but reproducible everywhere, and named, so a run trained
  with it is never mistaken for one trained with VGG.
- "auto": vgg19 when its file is found, the fallback otherwise.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.files import file_sha256
from gan_core.metrics.frechet import MetricError

VGG19 = "vgg19"
FALLBACK = "random-conv-s0"
AUTO = "auto"
NAMES = (AUTO, VGG19, FALLBACK)
VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG19 (the hash prefix is part of its name)
VGG19_ENV = "GANPIPE_VGG19_WEIGHTS"
# torchvision's cfg "E": conv widths, "M" = 2x2 max pool. Cut after relu5_4 (features index 35).
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
VGG_RESCALE = 1 / 12.75  # SRGAN's scaling of the VGG feature maps
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 32  # VGG54 pools 4 times: smaller inputs are upscaled to keep a 2x2 map (an 8 px one would vanish)
FALLBACK_SEED = 0
FALLBACK_WIDTHS = (32, 32, 64, 64)


def default_vgg19_path() -> Path:
    return Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / VGG19_FILE


def vgg19_path() -> Path:
    """$GANPIPE_VGG19_WEIGHTS when set, else torch hub's cache path (which may not exist)."""
    env = os.environ.get(VGG19_ENV)
    return Path(env) if env else default_vgg19_path()


class _Frozen(nn.Module):
    """Images (B, 1|3, H, W) in [-1, 1] -> ImageNet-normalised RGB in [0, 1] space -> `body` -> maps * scale."""

    def __init__(self, body: nn.Module, scale: float, min_side: int = 0):
        super().__init__()
        self.body, self.scale, self.min_side = body, scale, min_side
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = (x.float() + 1) / 2  # [0, 1], what the ImageNet statistics are of
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # grey -> RGB
        side = min(x.shape[-2:])
        if side < self.min_side:
            x = F.interpolate(x, scale_factor=self.min_side / side, mode="bicubic", align_corners=False)
        return self.body((x - self.mean) / self.std) * self.scale


def vgg19_features() -> nn.Sequential:
    """torchvision's vgg19().features[:36] (through relu5_4), same indices, so keys are features.N.*."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers)


class VGG19Features(_Frozen):
    def __init__(self):
        super().__init__(vgg19_features(), VGG_RESCALE, MIN_SIDE)

    @property
    def features(self) -> nn.Sequential:
        return self.body


def load_vgg19(path: str | Path) -> nn.Module:
    """Strictly load the `features.*` tensors of a torchvision VGG19 state dict (the classifier's
    keys are ignored); a missing key or a shape that differs is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"VGG19 weights: {path} does not exist (set ${VGG19_ENV} or put {VGG19_FILE} at "
                          f"{default_vgg19_path()})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a corrupt or foreign file have many types
        raise MetricError(f"VGG19 weights: {path} is not a torch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise MetricError(f"VGG19 weights: {path} holds a {type(state).__name__}, not a state dict")
    with torch.random.fork_rng(devices=[]):  # the init is overwritten: it must not move the caller's RNG
        model = VGG19Features()
    want = model.features.state_dict()
    for key, t in want.items():
        got = state.get(f"features.{key}")
        if not isinstance(got, Tensor):
            raise MetricError(f"VGG19 weights: {path} has no tensor 'features.{key}': not torchvision's "
                              f"vgg19 state dict ({VGG19_FILE})")
        if got.shape != t.shape:
            raise MetricError(f"VGG19 weights: {path}: 'features.{key}' has shape {tuple(got.shape)}, "
                              f"VGG19 needs {tuple(t.shape)}")
    model.features.load_state_dict({k: state[f"features.{k}"] for k in want}, strict=True)
    return _freeze(model)


def random_conv(seed: int = FALLBACK_SEED) -> nn.Module:
    """The fallback: 3x3 conv + ReLU x 4, a 2x average pool after the second; He-normal weights
    (variance 2 / fan_in keeps the ReLU activations' scale layer to layer), zero biases, drawn
    from their own generator so the caller's RNG stream is untouched and every machine gets the
    same weights."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(FALLBACK_WIDTHS):
        with torch.random.fork_rng(devices=[]):  # Conv2d's own init draws from the global RNG
            conv = nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
        if i == 1:
            layers.append(nn.AvgPool2d(2))
        cin = cout
    return _freeze(_Frozen(nn.Sequential(*layers), 1.0, min_side=4))


def _freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def state_sha256(model: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor of a state dict, in key order."""
    h = hashlib.sha256()
    for k, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_features(name: str = AUTO) -> tuple[nn.Module, str, str]:
    """(frozen module, resolved name, weights sha256) for "auto", "vgg19" or the fallback's name.
    vgg19's hash is the weights file's; the fallback's is that of its generated state dict."""
    if name not in NAMES:
        raise MetricError(f"content-loss features: {name!r} is not one of {NAMES}")
    path = vgg19_path()
    if name == VGG19 or (name == AUTO and path.is_file()):
        return load_vgg19(path), VGG19, file_sha256(path)
    model = random_conv()
    return model, FALLBACK, state_sha256(model)


_CACHE: dict[tuple[str, str, str], tuple[nn.Module, str, str]] = {}


def cached_features(name: str, device: torch.device) -> tuple[nn.Module, str, str]:
    """load_features, once per process, requested name, weights path and device: a train step needs
    the backbone every step, and keeping it out of G keeps G's state dict the generator's alone."""
    key = (name, str(vgg19_path()), str(device))
    if key not in _CACHE:
        model, resolved, sha = load_features(name)
        _CACHE[key] = (model.to(device), resolved, sha)
    return _CACHE[key]


__all__ = ["AUTO", "FALLBACK", "NAMES", "VGG19", "VGG19_ENV", "VGG19_FILE", "VGG19Features", "cached_features",
           "load_features", "load_vgg19", "random_conv", "state_sha256", "vgg19_path"]
