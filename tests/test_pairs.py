"""Built-in paired / unpaired / super-resolution datasets (gan_core/pairs.py): shapes, determinism,
held-out rows kept out of training, true unpairedness, and edge maps that sit on the images' edges."""
import hashlib
import socket

import numpy as np
import pytest

from gan_core import pairs
from gan_core.data import DataError
from gan_core.pairs import PAIRED_BUILTINS, PairedData

# what the brief asks of each dataset: kind and one row's shape
EXPECTED = {
    "edges2digits": ("paired", (32, 32)),
    "edges2photos": ("paired", (64, 64, 3)),
    "digits-inverted": ("unpaired", (32, 32)),
    "photo-patches": ("superres", (64, 64, 3)),
}


@pytest.fixture(scope="module")
def built():
    return {name: make() for name, make in PAIRED_BUILTINS.items()}


def row_hashes(a: np.ndarray) -> list[bytes]:
    return [hashlib.sha256(np.ascontiguousarray(r).tobytes()).digest() for r in a]


def split(a: np.ndarray, heldout: int) -> tuple[np.ndarray, np.ndarray]:
    return a[:len(a) - heldout], a[len(a) - heldout:]


def grey(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).mean(-1) if a.ndim == 4 else a.astype(np.float64)


@pytest.mark.parametrize("name", EXPECTED)
def test_kind_shapes_and_dtypes(built, name):
    d = built[name]
    kind, row = EXPECTED[name]
    assert d.kind == kind and d.images.dtype == np.uint8 and d.images.shape[1:] == row
    if kind == "superres":
        assert d.images_b is None and d.domains is None
    else:
        assert d.images_b.dtype == np.uint8 and d.images_b.shape == d.images.shape and len(d.domains) == 2
    assert 0.05 * len(d.images) < d.heldout < 0.3 * len(d.images)  # a real held-out set, most rows train
    assert d.source


def test_same_bytes_every_call(built):
    for name, make in PAIRED_BUILTINS.items():
        again, first = make(), built[name]
        assert again.images.tobytes() == first.images.tobytes(), name
        assert (again.images_b is None and first.images_b is None) or \
            again.images_b.tobytes() == first.images_b.tobytes(), name
        assert (again.heldout, again.source) == (first.heldout, first.source)


@pytest.mark.parametrize("name", EXPECTED)
def test_heldout_rows_never_among_training_rows(built, name):
    d = built[name]
    arrays = [d.images] + ([d.images_b] if d.images_b is not None else [])
    for a in arrays:
        train, held = split(a, d.heldout)
        assert not set(row_hashes(held)) & set(row_hashes(train)), name
    content = d.images if d.kind != "paired" else d.images_b  # (two patches may share an edge map)
    assert len(set(row_hashes(content))) == len(content), f"{name}: duplicate rows"


def test_digits_heldout_covers_every_class(built):
    digits, labels = pairs.digits32()
    label_of = dict(zip(row_hashes(digits), labels))
    for name in ("edges2digits", "digits-inverted"):
        d = built[name]
        train, held = split(d.images if name == "digits-inverted" else d.images_b, d.heldout)
        assert set(label_of[h] for h in row_hashes(held)) == set(range(10)), name
        assert set(label_of[h] for h in row_hashes(train)) == set(range(10)), name


def test_edges2digits_b_is_every_digit_once(built):
    digits, _ = pairs.digits32()
    assert sorted(row_hashes(built["edges2digits"].images_b)) == sorted(row_hashes(digits))


def test_digits_inverted_is_unpaired_in_training_and_aligned_when_held_out(built):
    d = built["digits-inverted"]
    assert d.heldout_aligned
    a_train, a_held = split(d.images, d.heldout)
    b_train, b_held = split(d.images_b, d.heldout)
    # held out: exact ground truth B = 255 - A, row by row
    assert np.array_equal(b_held.astype(np.int16), 255 - a_held.astype(np.int16))
    # training: no A row's image under the mapping is any B row, so no pair can be learnt from
    assert not set(row_hashes(255 - a_train)) & set(row_hashes(b_train))
    # and B really is inverted digits (of other digits), not unrelated images
    digits, _ = pairs.digits32()
    assert set(row_hashes(255 - b_train)) <= set(row_hashes(digits))
    assert set(row_hashes(a_train)) <= set(row_hashes(digits))


@pytest.mark.parametrize("name", ["edges2digits", "edges2photos"])
def test_edges_are_binary_and_sit_on_b_gradients(built, name):
    d = built[name]
    assert set(np.unique(d.images)) <= {0, 255}
    if d.images.ndim == 4:  # edges repeated to RGB
        assert (d.images == d.images[..., :1]).all()
    edges = grey(d.images) > 0
    gy, gx = np.gradient(grey(d.images_b), axis=(1, 2))
    mag = np.hypot(gx, gy)
    on, off = mag[edges].mean(), mag[~edges].mean()
    assert on > 2 * off, (on, off)
    shifted = np.roll(edges, 1, axis=0)  # edges of another image: the alignment is what makes `on` high
    assert on > 1.5 * mag[shifted].mean()


def test_photo_patches_are_crops_and_heldout_regions_share_no_pixel():
    images, edges, boxes = pairs.photo_patch_rows()
    photos = {name: pairs.load_photo(name) for name in pairs.PHOTOS}
    p = pairs.PATCH
    for row, box in zip(images, boxes):
        assert np.array_equal(row, photos[box.photo][box.y:box.y + p, box.x:box.x + p])
    assert [b.heldout for b in boxes] == sorted(b.heldout for b in boxes)  # training rows first
    for h in (b for b in boxes if b.heldout):
        for t in (b for b in boxes if not b.heldout and b.photo == h.photo):
            assert abs(h.x - t.x) >= p or abs(h.y - t.y) >= p, (h, t)
    assert {b.photo for b in boxes if b.heldout} == set(pairs.PHOTOS)  # every scene is evaluated
    assert len(edges) == len(images)


def test_photo_datasets_build_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in pairs.PHOTOS:
        assert pairs.load_photo(name).ndim == 3
    assert len(pairs.photo_patches().images) > 0


def test_missing_photo_is_a_clear_error(monkeypatch, tmp_path):
    import skimage.data

    monkeypatch.setattr(skimage.data, "data_dir", str(tmp_path))
    with pytest.raises(DataError, match="astronaut.png: not bundled"):
        pairs.load_photo("astronaut.png")


def test_paired_data_rejects_inconsistent_fields():
    a = np.zeros((4, 8, 8), np.uint8)
    ok = dict(kind="paired", images=a, images_b=a, heldout=1, heldout_aligned=True, domains=("x", "y"), source="t")
    PairedData(**ok)
    for change, field in [({"kind": "pairs"}, "kind"), ({"images": a.astype(np.float32)}, "images"),
                          ({"images_b": a[:3]}, "images_b"),
                          ({"kind": "superres", "heldout_aligned": False}, "images_b"),
                          ({"heldout": 0}, "heldout"), ({"heldout": 4}, "heldout"),
                          ({"heldout_aligned": False}, "heldout_aligned")]:
        with pytest.raises(DataError, match=f"^{field}:"):
            PairedData(**{**ok, **change})
