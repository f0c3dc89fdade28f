"""FID Inception-v3: key names/shapes of the pt_inception weights, strict loading, preprocessing, lookup.

No weights can be downloaded here, so every test uses a state dict generated from the model itself."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_core.metrics.frechet import MetricError
from gan_core.metrics.inception import (WEIGHTS_ENV, WEIGHTS_NAME, FIDInceptionV3, find_weights,
                                        load_fid_inception, preprocess, weights_sha256)

# Parameters (not buffers) of torchvision's Inception3 minus AuxLogits, with a 1008-way fc:
#   torchvision inception_v3 (aux_logits=True, 1000 classes)            27,161,264
#   - AuxLogits: conv0 768*128 + 2*128 = 98,560; conv1 128*768*25 + 2*768 = 2,459,136;
#                fc 768*1000 + 1000 = 769,000                            -3,326,696
#   + fc with 8 more classes: 8*2048 + 8                                    +16,392
#   = 23,850,960 (stem 172,672; 94 conv+BN units; fc 2,065,392)
EXPECTED_PARAMS = 23_850_960

KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def _state_dict(seed: int = 0) -> dict:
    """The model's own state dict with non-default BN statistics, so a load that ignored them would show."""
    torch.manual_seed(seed)
    sd = FIDInceptionV3().state_dict()
    for k, v in sd.items():
        if k.endswith("running_mean"):
            v.normal_(0, 0.1)
        elif k.endswith("running_var"):
            v.uniform_(0.5, 1.5)
    return sd


def test_state_dict_has_pt_inception_names_and_shapes():
    model = FIDInceptionV3()
    sd = model.state_dict()
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("AuxLogits" in k for k in sd)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS
    assert sum(k.endswith(".conv.weight") for k in sd) == 94
    assert not any(k.endswith(".conv.bias") for k in sd)  # conv has no bias: BN follows
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not model.training


def test_load_from_env_var_is_strict_and_exact(tmp_path, monkeypatch):
    sd = _state_dict()
    path = tmp_path / WEIGHTS_NAME
    torch.save(sd, path)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    model = load_fid_inception(download=False, cache_dir=tmp_path / "empty-cache")
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert len(weights_sha256(path)) == 64


def test_file_without_num_batches_tracked_loads_strictly(tmp_path):
    # a weights file written before BatchNorm had num_batches_tracked (plain dict, no version
    # metadata): BatchNorm fills the counter in itself, which is how pytorch-fid's strict load works too
    sd = {k: v for k, v in _state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    model = load_fid_inception(path)
    assert torch.equal(model.state_dict()["fc.weight"], sd["fc.weight"])


def test_wrong_keys_fail_loudly(tmp_path):
    sd = _state_dict()
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="AuxLogits"):
        load_fid_inception(tmp_path / "bad.pth")


def test_extract_grey_images_shapes_and_channel_repeat():
    model = FIDInceptionV3()
    model.load_state_dict(_state_dict())
    grey = torch.rand(2, 1, 16, 16) * 2 - 1  # (2, 1, 16, 16) in [-1, 1]
    feats, logits = model.extract(grey, batch_size=1)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert feats.dtype == np.float64 and logits.dtype == np.float64
    assert np.isfinite(feats).all() and np.isfinite(logits).all()
    assert (feats >= 0).all()  # average of post-ReLU maps
    fc = model.fc
    np.testing.assert_allclose(logits, (feats @ fc.weight.detach().double().numpy().T) + fc.bias.detach().double().numpy(),
                               rtol=1e-4, atol=1e-5)
    feats_rgb, _ = model.extract(grey.repeat(1, 3, 1, 1))  # grey is RGB with equal channels
    np.testing.assert_allclose(feats, feats_rgb, rtol=1e-5, atol=1e-6)


def test_preprocess_matches_pytorch_fid():
    const = torch.full((1, 3, 299, 299), 0.2)  # [-1, 1] space; 0.6 in pytorch-fid's [0, 1] space
    out = preprocess(const)
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out, const)  # resize to the same size is the identity
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    torch.testing.assert_close(preprocess(x), x, rtol=0, atol=1e-6)
    small = torch.rand(2, 3, 16, 16) * 2 - 1
    ref = 2 * F.interpolate((small + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(preprocess(small), ref)
    with pytest.raises(MetricError):
        preprocess(torch.zeros(1, 2, 8, 8))


def test_offline_lookup_explains_where_to_put_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(MetricError) as err:
        find_weights(cache_dir=cache, url="http://127.0.0.1:9/nope")
    msg = str(err.value)
    assert WEIGHTS_NAME in msg and WEIGHTS_ENV in msg and str(cache / WEIGHTS_NAME) in msg
    assert "offline" in msg and "127.0.0.1:9/nope" in msg
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial file left behind
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(MetricError, match="nowhere.pth"):
        find_weights(missing)


def test_lookup_order_cache_then_download(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    src = tmp_path / "src.pth"
    src.write_bytes(b"weights")
    cache = tmp_path / "cache"
    with pytest.raises(MetricError, match="disabled"):
        find_weights(cache_dir=cache, download=False)
    got = find_weights(cache_dir=cache, url=src.as_uri())  # file:// exercises the download path offline
    assert got == cache / WEIGHTS_NAME and got.read_bytes() == b"weights"
    assert find_weights(cache_dir=cache, url="http://127.0.0.1:9/nope") == got  # cached: no download
    monkeypatch.setenv(WEIGHTS_ENV, str(src))
    assert find_weights(cache_dir=cache) == src  # env var wins over the cache
    assert find_weights(got, cache_dir=cache) == got  # explicit path wins over everything
