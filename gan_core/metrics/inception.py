"""The FID Inception-v3 (TTUR / pytorch-fid), in plain PyTorch, and a loader for its weights.

This matches pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)` built on
`fid_inception_v3()`: torchvision's Inception3 layout with 1008 classes and no AuxLogits, with the
FID blocks (average pools that ignore the zero padding, as TensorFlow's do, and a max pool in the
last block's pool branch). Module names follow torchvision, so `state_dict()` keys are exactly those
of "pt_inception-2015-12-05-6726825d.pth" and that file loads strictly. With the real weights the
pool3 features, and so FID, agree with pytorch-fid's numbers.

No weights can be downloaded on the development machine (it is offline), so the tests load a state
dict generated from this model itself: they check names, shapes and mechanics, not feature values.
torchvision is deliberately not used (it is not installable here).
"""
from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.files import file_sha256
from gan_core.metrics.frechet import MetricError

BACKBONE_ID = "inception-v3-fid"
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
WEIGHTS_ENV = "GANPIPE_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 TF graph's 1008-way softmax (1000 ImageNet classes + 8 unused)
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """conv (no bias: BN follows) -> BN(eps=1e-3, TF's value) -> ReLU. Keys: `conv.*`, `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TF's average pool divides by the number of real pixels, not counting the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block: 64 + 64 + 96 + pool_features channels out."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a); identical in pytorch-fid and torchvision."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions: 4 x 192 = 768 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a); identical in pytorch-fid and torchvision."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE_1(nn.Module):
    """8x8 block (Mixed_7b): 320 + 768 + 768 + 192 = 2048 channels out; TF-style average pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def _pool(self, x: Tensor) -> Tensor:
        return _tf_avg_pool(x)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(self._pool(x))
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionE_2(FIDInceptionE_1):
    """Last block (Mixed_7c). The FID graph max-pools here (the paper says average; pytorch-fid
    keeps the max because that is what the TF graph the reference statistics came from does)."""

    def _pool(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(nn.Module):
    """(B, 3, 299, 299) in [-1, 1] -> pool3 features (B, 2048) -> logits (B, 1008)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        """pytorch-fid's blocks 0-3: (B, 3, 299, 299) in [-1, 1] -> (B, 2048) pool3, >= 0."""
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))  # (B, 64, 73, 73)
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)  # ends (B, 2048, 8, 8)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # (B, 2048)

    def forward(self, x: Tensor) -> Tensor:
        # torchvision's dropout before fc is the identity in eval mode, so it is left out
        return self.fc(self.features(x))  # (B, 1008)

    @torch.no_grad()
    def extract(self, images: Tensor, batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1 or 3, H, W) float in [-1, 1] -> pool3 features (N, 2048), logits (N, 1008), float64."""
        if self.training:
            raise MetricError("FIDInceptionV3.extract: model is in training mode (BN would use batch stats)")
        device = next(self.parameters()).device
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            f = self.features(preprocess(images[i:i + batch_size].to(device)))
            feats.append(f.double().cpu())
            logits.append(self.fc(f).double().cpu())
        if not feats:
            raise MetricError("FIDInceptionV3.extract: no images")
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def preprocess(images: Tensor) -> Tensor:
    """Project images (B, 1|3, H, W) in [-1, 1] -> (B, 3, 299, 299) in [-1, 1], exactly as pytorch-fid
    treats a [0, 1] batch (resize_input and normalize_input): the resize happens in [0, 1] space."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MetricError(f"inception input: need (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images.float() + 1) / 2  # (B, C, H, W) in [0, 1], what pytorch-fid's loader gives
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # grey -> RGB, as PIL's convert("RGB") does in pytorch-fid
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1  # (B, 3, 299, 299) in [-1, 1]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "ganpipe"


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Fetch into a temp file beside `dest`, then rename: a killed download never leaves a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_weights(path: str | Path | None = None, cache_dir: Path | None = None, download: bool = True,
                 url: str = WEIGHTS_URL) -> Path:
    """Explicit path -> $GANPIPE_INCEPTION_WEIGHTS -> cache_dir/WEIGHTS_NAME -> download into cache_dir."""
    if path is not None:
        if not Path(path).is_file():
            raise MetricError(f"Inception weights: {path} does not exist")
        return Path(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not Path(env).is_file():
            raise MetricError(f"Inception weights: ${WEIGHTS_ENV}={env} does not exist")
        return Path(env)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cached = cache / WEIGHTS_NAME
    if cached.is_file():
        return cached
    why = "downloading is disabled"
    if download:
        try:
            _download(url, cached)
            return cached
        except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
            why = f"the download from {url} failed ({e}); this machine looks offline"
    raise MetricError(
        f"Inception weights {WEIGHTS_NAME} not found and {why}. Download it from {url} on a machine "
        f"with internet, then either put it at {cached} or set {WEIGHTS_ENV}=/path/to/{WEIGHTS_NAME}.")


def weights_sha256(path: str | Path) -> str:
    return file_sha256(path)


def load_fid_inception(path: str | Path | None = None, cache_dir: Path | None = None,
                       download: bool = True) -> FIDInceptionV3:
    """Strictly load the pt_inception weights: any missing/extra key is an error, not a silent init."""
    state = torch.load(find_weights(path, cache_dir, download), map_location="cpu", weights_only=True)
    with torch.random.fork_rng(devices=[]):  # random init must not shift the caller's RNG stream
        model = FIDInceptionV3()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
