"""Sources: built-ins, synthetic datasets, and the download path against a local HTTP server
(the real mirrors are unreachable here; the code that talks to them is the same)."""
import gzip
import hashlib
import http.server
import struct
import threading

import numpy as np
import pytest

from flows.data import sources
from gan_core.ingest.ingest import read_local
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import IngestError


def idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server holding a tiny MNIST-format pair of files."""
    root = tmp_path / "www"
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (10, 28, 28), dtype=np.uint8)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(images), mtime=0))
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(np.arange(10, dtype=np.uint8) % 5), mtime=0))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_reads_idx(mirror, tmp_path, monkeypatch):
    root, url = mirror
    monkeypatch.setenv("GANPIPE_DOWNLOADS", str(tmp_path / "cache"))
    monkeypatch.setenv("GANPIPE_DOWNLOAD_MIRROR", url)
    with pytest.raises(IngestError, match="has md5 .* expected f68b3c2d"):
        sources.download("mnist")  # the published md5s do not match the stand-in files
    assert not any((tmp_path / "cache" / "mnist").glob("*.gz"))  # nothing unverified is kept
    files = {f.name: md5(f) for f in root.iterdir()}
    monkeypatch.setitem(sources.DOWNLOADS, "mnist", sources.Download(url, files))
    got = sources.fetch("mnist", tmp_path)
    res = read_local(got.path, IngestPolicy(resolution=16, channels=1))
    assert res.images.shape == (10, 1, 16, 16) and res.classes == ["0", "1", "2", "3", "4"]


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("GANPIPE_DOWNLOADS", str(tmp_path / "cache"))
    monkeypatch.setenv("GANPIPE_DOWNLOAD_MIRROR", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(IngestError, match="cannot download .* offline.*ganpipe dataset add NAME"):
        sources.download("fashion-mnist", timeout=5)


def test_builtins_and_unknown_sources(tmp_path):
    images, labels = sources.BUILTIN["synthetic-shapes"]()
    assert images.shape == (1024, 16, 16, 3) and set(labels) == set(range(8))
    a, _ = sources.BUILTIN["synthetic-blobs"]()
    assert np.array_equal(a, sources.BUILTIN["synthetic-blobs"]()[0])  # deterministic: same hash every time
    with pytest.raises(IngestError, match="not a known source"):
        sources.fetch(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(IngestError, match="arbitrary URLs"):
        sources.fetch("https://example.com/x.zip", tmp_path)
