import numpy as np
import pytest
import torch

from conftest import blobs
from gan_core.batches import ShardedBatches
from gan_core.data import DataError, content_hash, load_prepared, normalise_images, to_float, to_uint8, write_prepared


def test_write_and_load_round_trip_with_manifest(tmp_path):
    images, labels = blobs(40)
    m = write_prepared(tmp_path / "ds", images, labels, {"name": "ds"})
    assert m["count"] == 40 and m["shape"] == [1, 8, 8] and m["labels"]["num_classes"] == 4
    assert m["content_sha256"] == content_hash(images, labels)
    ds = load_prepared(tmp_path / "ds")
    assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp folders left


def test_equal_data_gives_equal_bytes(tmp_path):
    images, labels = blobs(16)
    write_prepared(tmp_path / "a", images, labels, {"name": "a"})
    write_prepared(tmp_path / "b", images, labels, {"name": "a"})
    for f in ("images.npy", "labels.npy", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_edited_file_is_refused(tmp_path):
    images, labels = blobs(16)
    write_prepared(tmp_path / "ds", images, labels, {"name": "ds"})
    images[0, 0, 0, 0] ^= 1
    np.save(tmp_path / "ds" / "images.npy", images)
    with pytest.raises(DataError, match="images.npy: sha256 differs"):
        load_prepared(tmp_path / "ds")


def test_failed_write_keeps_the_previous_version(tmp_path):
    images, labels = blobs(16)
    write_prepared(tmp_path / "ds", images, labels, {"name": "ds"})
    before = (tmp_path / "ds" / "manifest.json").read_text()

    def boom(tmp, manifest):
        raise RuntimeError("extras failed")

    with pytest.raises(RuntimeError):
        write_prepared(tmp_path / "ds", images[:8], labels[:8], {"name": "ds"}, extras=boom)
    assert (tmp_path / "ds" / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize("images, labels, msg", [
    (np.zeros((2, 1, 8, 8), np.float32), None, "uint8"),
    (np.zeros((2, 2, 8, 8), np.uint8), None, "shape"),
    (np.zeros((0, 1, 8, 8), np.uint8), None, "empty"),
    (np.zeros((2, 1, 8, 8), np.uint8), np.zeros(3, np.int64), "labels"),
])
def test_invalid_arrays_are_named(tmp_path, images, labels, msg):
    with pytest.raises(DataError, match=msg):
        write_prepared(tmp_path / "x", images, labels, {})
    assert not (tmp_path / "x").exists()


def test_normalise_resizes_and_converts_channels():
    grey = np.full((3, 8, 8), 200, np.uint8)
    out = normalise_images(grey, 16, 3)
    assert out.shape == (3, 3, 16, 16) and out.dtype == np.uint8 and (out == 200).all()
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    assert normalise_images(rgb, 8, 1).shape == (2, 1, 8, 8)


def test_float_range_round_trip():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(x)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), x)


def test_sharded_batches_are_disjoint_and_resumable():
    images = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1)
    r0 = ShardedBatches({"images": images}, 4, rank=0, world=2, seed=3)
    r1 = ShardedBatches({"images": images}, 4, rank=1, world=2, seed=3)
    a, b = r0.from_step(0), r1.from_step(0)
    seen0 = torch.cat([next(a)["images"].flatten() for _ in range(5)])
    seen1 = torch.cat([next(b)["images"].flatten() for _ in range(5)])
    assert len(set(seen0.tolist()) | set(seen1.tolist())) == 40  # one epoch covers every image once
    full = r0.from_step(0)
    stream = [next(full)["images"] for _ in range(12)]
    resumed = r0.from_step(7)  # crosses an epoch boundary (5 batches per epoch)
    assert all(torch.equal(stream[7 + i], next(resumed)["images"]) for i in range(5))


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="smaller than one batch"):
        ShardedBatches({"images": torch.zeros(5, 1, 1, 1, dtype=torch.uint8)}, 4, 0, 2, 0)


def test_independent_domain_is_drawn_on_its_own_and_resumes():
    a = torch.arange(24, dtype=torch.uint8).reshape(24, 1, 1, 1)
    b = torch.arange(100, 110, dtype=torch.uint8).reshape(10, 1, 1, 1)  # another length: no pairing possible
    s = ShardedBatches({"images": a}, 2, 0, 1, seed=5, independent={"images_b": b})
    stream = s.from_step(0)
    batches = [next(stream) for _ in range(15)]  # 3 epochs of B (5 batches), 1.25 of A (12 batches)
    for epoch in range(3):  # every B epoch is a permutation of B
        rows = torch.cat([x["images_b"].flatten() for x in batches[epoch * 5:(epoch + 1) * 5]])
        assert sorted(rows.tolist()) == list(range(100, 110))
    resumed = s.from_step(9)
    assert all(torch.equal(batches[9 + i]["images_b"], next(resumed)["images_b"]) for i in range(6))


def test_training_arrays_leave_the_heldout_rows_out(tmp_path):
    from gan_core.data import heldout_arrays, load_prepared, training_arrays, write_prepared

    a = np.arange(10, dtype=np.uint8).repeat(4).reshape(10, 1, 2, 2)
    b = 255 - a
    write_prepared(tmp_path / "p", a, None, {"kind": "paired", "heldout": 3}, images_b=b)
    ds = load_prepared(tmp_path / "p")
    aligned, independent = training_arrays(ds)
    assert independent == {} and np.array_equal(aligned["images"], a[:7]) and np.array_equal(aligned["images_b"], b[:7])
    ha, hb = heldout_arrays(ds)
    assert np.array_equal(ha, a[7:]) and np.array_equal(hb, b[7:])
    write_prepared(tmp_path / "u", a, None, {"kind": "unpaired", "heldout": 3}, images_b=b)
    ds = load_prepared(tmp_path / "u")
    aligned, independent = training_arrays(ds)
    assert set(aligned) == {"images"} and np.array_equal(independent["images_b"], b[:7])
    assert heldout_arrays(ds)[1] is None  # held-out rows of unpaired data are ground truth only when declared
