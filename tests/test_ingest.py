"""Ingestion refuses bad files with the path and the reason, and never half-accepts an input."""
import io
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from gan_core.ingest.archive import ArchiveLimits
from gan_core.ingest.ingest import class_order, read_local
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import IngestError

SKIP = IngestPolicy(resolution=8, channels=1, on_reject="skip")


def png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def grey(v, size=8):
    return np.full((size, size), v, dtype=np.uint8)


def huge_header_png(w=20000, h=20000) -> bytes:
    """A valid small PNG whose IHDR claims w x h (CRC fixed), like a decompression bomb's header."""
    data = bytearray(png(grey(1)))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def write_tree(root, files: dict):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_folder_with_every_kind_of_bad_file_reports_each_one(tmp_path):
    good = png(grey(10))
    files = {
        "a/ok.png": good,
        "a/truncated.png": png(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)[:-30],
        "a/empty.png": b"",
        "a/text.png": b"hello, I am not a picture\n",
        "a/bomb.png": huge_header_png(),
        "b/ok.png": png(grey(200)),
        "b/zdup.png": png(grey(200)),  # same pixels and class as b/ok.png, read after it
        "b/other-class-same-pixels.png": good,  # same pixels as a/ok.png but another class: kept
        "loose.png": png(grey(50)),  # outside the class folders
    }
    res = read_local(write_tree(tmp_path / "src", files), SKIP)
    rejected = {p: r for p, r, _ in res.report.rejected}
    assert rejected == {"a/truncated.png": "truncated", "a/empty.png": "empty", "a/text.png": "format",
                        "a/bomb.png": "bomb", "b/zdup.png": "duplicate", "loose.png": "no-label"}
    assert res.report.counts == {"bomb": 1, "duplicate": 1, "empty": 1, "format": 1, "no-label": 1, "truncated": 1}
    assert res.images.shape == (3, 1, 8, 8) and res.classes == ["a", "b"] and res.labels.tolist() == [0, 1, 1]
    detail = dict((p, d) for p, _, d in res.report.rejected)
    assert "20000x20000" in detail["a/bomb.png"] or "pixels" in detail["a/bomb.png"]
    assert "b/ok.png" in detail["b/zdup.png"]


def test_fail_policy_refuses_the_whole_input_and_lists_the_rejects(tmp_path):
    src = write_tree(tmp_path / "src", {"x/ok.png": png(grey(1)), "x/empty.png": b""})
    with pytest.raises(IngestError, match=r"(?s)1 file\(s\) rejected.*x/empty.png: empty"):
        read_local(src, IngestPolicy(resolution=8, channels=1, on_reject="fail"))


def test_mixed_modes_are_converted_or_rejected_by_policy(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255  # top half opaque red, bottom half transparent
    sixteen = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    pal = Image.fromarray(grey(30)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(cmyk, "JPEG")
    files = {"rgba.png": png(rgba), "i16.png": png(sixteen), "p.png": buf.getvalue(), "cmyk.jpg": cmyk.getvalue(),
             "l.png": png(grey(7)), "rgb.png": png(np.full((8, 8, 3), 90, np.uint8))}
    src = write_tree(tmp_path / "src", files)
    res = read_local(src, IngestPolicy(resolution=8, channels=3, on_reject="skip"))
    assert res.report.rejected == [] and res.images.shape == (6, 3, 8, 8) and res.labels is None
    conv = res.report.converted
    assert conv["RGBA->RGB"] == 1 and conv["I;16->RGB"] == 1 and conv["P->RGB"] == 1 and conv["CMYK->RGB"] == 1
    i = sorted(files).index("rgba.png")
    assert res.images[i, 0, 0, 0] == 255 and res.images[i, 0, 7, 7] == 0  # transparency composited on black
    i16 = sorted(files).index("i16.png")
    assert res.images[i16].max() == round(63000 * 255 / 65535)  # 16-bit range scaled, not clipped
    strict = read_local(src, IngestPolicy(resolution=8, channels=3, modes="reject", on_reject="skip"))
    assert {p: r for p, r, _ in strict.report.rejected} == {
        "rgba.png": "mode", "i16.png": "mode", "p.png": "mode", "cmyk.jpg": "mode"}


def test_mixed_sizes_are_cropped_stretched_or_rejected(tmp_path):
    wide = np.zeros((8, 16), dtype=np.uint8)
    wide[:, 4:12] = 255  # the centre square is white
    src = write_tree(tmp_path / "src", {"wide.png": png(wide), "big.png": png(grey(80, 32)), "ok.png": png(grey(3))})
    crop = read_local(src, SKIP)
    assert crop.images[sorted(["wide.png", "big.png", "ok.png"]).index("wide.png")].min() == 255
    assert crop.report.converted["resize 16x8->8x8"] == 1 and crop.report.converted["resize 32x32->8x8"] == 1
    stretch = read_local(src, IngestPolicy(resolution=8, channels=1, resize="stretch", on_reject="skip"))
    assert stretch.images[sorted(["wide.png", "big.png", "ok.png"]).index("wide.png")].min() < 255
    strict = read_local(src, IngestPolicy(resolution=8, channels=1, resize="reject", on_reject="skip"))
    assert {p: r for p, r, _ in strict.report.rejected} == {"wide.png": "size", "big.png": "size"}


def test_tar_with_traversal_absolute_path_symlink_and_device_is_reported(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        def add(name, data=b"", **kw):
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
        add("ds/ok.png", png(grey(5)))
        add("ds/../x.png", png(grey(6)))
        add("/etc/abs.png", png(grey(7)))
        add("ds/link.png", type=tarfile.SYMTYPE, linkname="../../../etc/passwd")
        add("ds/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    res = read_local(path, SKIP)
    rejected = {p: (r, d) for p, r, d in res.report.rejected}
    assert rejected["ds/../x.png"][0] == "unsafe-path" and "'..'" in rejected["ds/../x.png"][1]
    assert rejected["/etc/abs.png"][0] == "unsafe-path" and "absolute" in rejected["/etc/abs.png"][1]
    assert rejected["ds/link.png"][0] == "link" and "out of the archive" in rejected["ds/link.png"][1]
    assert rejected["ds/dev"][0] == "special-file"
    assert res.images.shape == (1, 1, 8, 8)
    assert not (tmp_path / "x.png").exists() and not (tmp_path.parent / "x.png").exists()  # nothing extracted


def test_zip_bomb_member_is_never_decompressed_and_whole_archive_limits_stop_it(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", png(grey(9)))
        zf.writestr("zeros.png", b"\0" * (20 * 2**20))  # 20 MiB of zeros -> ~20 KiB
    res = read_local(path, SKIP)
    assert [(p, r) for p, r, _ in res.report.rejected] == [("zeros.png", "compression-ratio")]
    with pytest.raises(IngestError, match="zip bomb"):
        read_local(path, SKIP, limits=ArchiveLimits(max_total_bytes=2**20))
    with pytest.raises(IngestError, match="members > limit"):
        read_local(path, SKIP, limits=ArchiveLimits(max_members=1))


def test_zip_with_class_folders_under_one_top_folder_is_labelled(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for c in ("10", "2"):
            zf.writestr(f"digits/{c}/a.png", png(grey(int(c))))
        zf.writestr("__MACOSX/digits/._junk", b"xx")
    res = read_local(path, SKIP)
    assert res.classes == ["2", "10"] and res.labels.tolist() == [1, 0] and res.report.rejected == []
    assert read_local(path, SKIP, kind="unconditional").labels is None


def test_npz_and_idx_sources(tmp_path):
    images = np.stack([grey(i) for i in range(6)])
    labels = np.arange(6) % 3
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    res = read_local(tmp_path / "d.npz", SKIP)
    assert res.images.shape == (6, 1, 8, 8) and res.labels.tolist() == [0, 1, 2, 0, 1, 2]
    np.savez(tmp_path / "obj.npz", images=np.array([object()], dtype=object))
    with pytest.raises(IngestError, match="unreadable .npz"):
        read_local(tmp_path / "obj.npz", SKIP)  # object arrays would need pickle: refused

    def idx(arr, code):
        return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx(images, 0x08))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx(labels.astype(np.uint8), 0x08))
    res = read_local(tmp_path / "t10k-images-idx3-ubyte", SKIP)
    assert res.images.shape == (6, 1, 8, 8) and res.classes == ["0", "1", "2"]
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(idx(images, 0x08)[:-5])
    with pytest.raises(IngestError, match="bytes"):
        read_local(tmp_path / "bad-images-idx3-ubyte", SKIP)


def test_same_input_gives_the_same_arrays(tmp_path):
    src = write_tree(tmp_path / "src", {f"c{i % 2}/{i}.png": png(grey(i * 20)) for i in range(6)})
    a, b = read_local(src, SKIP), read_local(src, SKIP)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert class_order(["b", "a"]) == ["a", "b"]


def test_paired_and_unpaired_domains(tmp_path):
    files = {"photo/a.png": png(grey(10)), "photo/b.png": png(grey(20)), "photo/lonely.png": png(grey(30)),
             "sketch/a.jpg": _jpeg(grey(110)), "sketch/b.png": png(grey(120))}
    src = write_tree(tmp_path / "src", files)
    paired = read_local(src, SKIP, kind="paired")
    assert paired.kind == "paired" and paired.classes == ["photo", "sketch"]
    assert paired.images[:, 0, 0, 0].tolist() == [10, 20] and paired.images_b.shape == (2, 1, 8, 8)
    assert abs(int(paired.images_b[0, 0, 0, 0]) - 110) <= 2 and paired.images_b[1, 0, 0, 0] == 120  # a<->a, b<->b
    assert [(p, r) for p, r, _ in paired.report.rejected] == [("photo/lonely", "no-pair")]
    with pytest.raises(IngestError, match="no-pair"):
        read_local(src, IngestPolicy(resolution=8, channels=1), kind="paired")
    unpaired = read_local(src, SKIP, kind="unpaired")
    assert unpaired.images.shape[0] == 3 and unpaired.images_b.shape[0] == 2 and unpaired.kind == "unpaired"
    (src / "third").mkdir()
    (src / "third" / "x.png").write_bytes(png(grey(1)))
    with pytest.raises(IngestError, match="exactly two sub-folders"):
        read_local(src, SKIP, kind="unpaired")
    sr = read_local(src / "photo", SKIP, kind="superres")
    assert sr.kind == "superres" and sr.labels is None


def _jpeg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_a_watcher_sees_every_entry_of_a_folder_as_it_is_checked(tmp_path):
    root = write_tree(tmp_path / "d", {f"{c}/{i}.png": png(grey(10 * i + c)) for c in (1, 2) for i in range(3)})
    seen: list[str] = []

    def watch(entries):
        for e in entries:  # handed on one at a time: the count moves while ingest decodes
            seen.append(e.path)
            yield e

    res = read_local(root, SKIP, watch=watch)
    assert len(seen) == 6 and len(res.images) == 6 and res.report.accepted == 6
