"""Captioned data: the two source layouts, every bad caption input refused with its file and reason
(and nothing half-written), the vocabulary versioned with the data, and the offline built-in."""
import io
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.data import catalog
from flows.data.datasets import add, show
from flows.data.sources import builtin_kind, caption_builtin
from flows.ops.params import load_config
from flows.ops.settings import load_settings
from gan_core.captions import UNK, parse
from gan_core.config import ConfigError
from gan_core.data import (DataError, caption_data, content_hash, heldout_captions, load_prepared,
                           training_arrays, write_prepared)
from gan_core.ingest.ingest import read_local
from gan_core.ingest.policy import IngestPolicy
from gan_core.ingest.report import IngestError
from workspace import BIN, env_for, ganpipe, make_workspace

FAIL = IngestPolicy(resolution=8, channels=1)
SKIP = IngestPolicy(resolution=8, channels=1, on_reject="skip")
CAPTIONS = {f"{i}.png": [f"a grey square number {i}", f"shade {i} of grey"] for i in range(6)}


def png(v: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), v, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jsonl(captions: dict) -> bytes:
    return "".join(json.dumps({"file": f, "captions": c}) + "\n" for f, c in captions.items()).encode()


def source(root: Path, layout: str = "jsonl", captions: dict = CAPTIONS, lines: bytes | None = None,
           texts: dict | None = None) -> Path:
    """Six grey images with captions in `layout`; `lines`/`texts` replace the captions file(s)."""
    root.mkdir(parents=True)
    for i, name in enumerate(captions):
        (root / name).write_bytes(png(40 * i))
    if layout == "jsonl":
        (root / "captions.jsonl").write_bytes(jsonl(captions) if lines is None else lines)
    else:
        for name, data in (texts if texts is not None else {Path(f).stem + ".txt": "\n".join(c).encode() for f, c in captions.items()}).items():
            (root / name).write_bytes(data)
    return root


def test_jsonl_txt_and_zip_layouts_read_the_same_rows(tmp_path):
    a = read_local(source(tmp_path / "a", "jsonl"), FAIL, "captioned")
    b = read_local(source(tmp_path / "b", "txt", texts={
        **{f"{i}.txt": f"a grey square number {i}\n\n  shade {i} of grey  \n".encode() for i in range(6)}}),
        FAIL, "captioned")
    zipped = tmp_path / "caps.zip"
    with zipfile.ZipFile(zipped, "w") as z:  # one shared top-level folder, as zipping a folder makes
        for p in sorted((tmp_path / "a").iterdir()):
            z.write(p, f"caps/{p.name}")
    c = read_local(zipped, FAIL, "captioned")
    for r in (a, b, c):
        assert r.kind == "captioned" and r.labels is None and r.report.accepted == 6 and not r.report.rejected
        assert r.captions == [CAPTIONS[f"{i}.png"] for i in range(6)]
        assert np.array_equal(r.images, a.images) and [int(x.flat[0]) for x in r.images] == [40 * i for i in range(6)]


BAD = [  # (name, layout, source overrides, the report line expected)
    ("image without a caption", "jsonl", {"lines": jsonl({k: v for k, v in CAPTIONS.items() if k != "3.png"})},
     "3.png: no-caption"),
    ("empty caption", "jsonl", {"lines": jsonl({**CAPTIONS, "2.png": ["fine", "   "]})},
     "2.png: empty-caption (captions.jsonl line 3: caption 2 is empty)"),
    ("empty caption list", "jsonl", {"lines": jsonl({**CAPTIONS, "2.png": []})},
     "2.png: empty-caption (captions.jsonl line 3: no captions)"),
    ("empty .txt", "txt", {"texts": {**{f"{i}.txt": b"a caption" for i in range(6)}, "4.txt": b"\n  \n"}},
     "4.png: empty-caption (4.txt: no captions)"),
    ("caption without words", "jsonl", {"lines": jsonl({**CAPTIONS, "1.png": ["?! ..."]})},
     "1.png: no-words (captions.jsonl line 2: caption 1 '?! ...' has no words)"),
    ("caption for a missing image", "jsonl", {"lines": jsonl({**CAPTIONS, "sub/9.png": ["a ghost"]})},
     "captions.jsonl:7: no-image (sub/9.png: no such image in the source)"),
    (".txt for a missing image", "txt", {"texts": {**{f"{i}.txt": b"a caption" for i in range(6)}, "9.txt": b"x"}},
     "9.txt: no-image (no image named 9.* beside it)"),
    ("non-UTF-8 .txt", "txt", {"texts": {**{f"{i}.txt": b"a caption" for i in range(6)}, "5.txt": b"caf\xe9 au lait"}},
     "5.png: encoding (5.txt: byte 3 is not UTF-8)"),
    ("non-UTF-8 jsonl line", "jsonl", {"lines": jsonl(CAPTIONS).replace(b"number 4", b"number \xff4")},
     "4.png: encoding (captions.jsonl line 5: byte"),
    ("bad JSON line", "jsonl", {"lines": jsonl(CAPTIONS).replace(b'{"file": "1.png"', b'{"file": "1.png",,')},
     "captions.jsonl:2: bad-json (line 2: Expecting"),
    ("line without captions", "jsonl", {"lines": jsonl(CAPTIONS) + b'{"file": "0.png", "captions": "one"}\n'},
     "captions.jsonl:7: bad-json (line 7: \"captions\" must be a list of texts)"),
    ("a second line for one image", "jsonl", {"lines": jsonl(CAPTIONS) + jsonl({"0.png": ["again"]})},
     "captions.jsonl:7: repeated-entry (0.png already has captions on line 1)"),
]


@pytest.mark.parametrize("layout,overrides,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_every_bad_caption_input_is_refused_with_its_file_and_reason(tmp_path, layout, overrides, expected):
    src = source(tmp_path / "src", layout, **overrides)
    with pytest.raises(IngestError, match="--policy fail") as e:
        read_local(src, FAIL, "captioned")
    assert f"  - {expected}" in str(e.value)
    skipped = read_local(src, SKIP, "captioned")  # skip: the rows are left out and reported, the rest kept
    rejected = [(p, r) for p, r, _ in skipped.report.rejected]
    assert (expected.split(": ")[0], expected.split(": ")[1].split(" ")[0]) in rejected
    if "bad-json (line 2" in expected:  # the line named no readable image: that image has no caption
        assert ("1.png", "no-caption") in rejected and len(rejected) == 2
    else:
        assert len(rejected) == 1
    dropped = sum(p.endswith(".png") for p, _ in rejected)
    assert len(skipped.captions) == len(skipped.images) == skipped.report.accepted == 6 - dropped
    assert all(caps and all(c.strip() for c in caps) for caps in skipped.captions)


def test_a_source_without_usable_captions_is_refused_whatever_the_policy(tmp_path):
    both = source(tmp_path / "both", "jsonl")
    (both / "0.txt").write_text("a caption")
    neither = source(tmp_path / "neither", "txt", texts={})
    for src, message in [(both, "both captions.jsonl and .txt caption files; use one layout"),
                         (neither, "needs captions.jsonl at the top or a <stem>.txt per image; found neither")]:
        for policy in (FAIL, SKIP):
            with pytest.raises(IngestError, match=message.replace(".", r"\.")):
                read_local(src, policy, "captioned")


def test_a_refused_add_writes_nothing(tmp_path):
    ws = make_workspace(tmp_path)
    s = load_settings({"GANPIPE_WORKSPACE": str(ws), "GANPIPE_HOME": str(ws / ".ganpipe")})
    before = (ws / "data" / "catalog.yaml").read_text()
    bad = source(tmp_path / "bad", "jsonl", lines=jsonl({**CAPTIONS, "2.png": [""]}))
    with pytest.raises(IngestError, match="2.png: empty-caption"):
        add(s, "caps", str(bad), FAIL, kind="captioned")
    assert (ws / "data" / "catalog.yaml").read_text() == before
    assert not (ws / "data" / "datasets").exists() and not list(ws.glob("data/**/*.dvc"))
    with pytest.raises(IngestError, match="--kind captioned needs a folder or archive"):
        add(s, "caps", "synthetic-shapes", FAIL, kind="captioned")
    # a captioned dataset only feeds captioned families: the built-in's kind is checked before any work
    assert builtin_kind("captions") == "captioned"
    with pytest.raises(ConfigError, match="built-in captions is a captioned dataset; dcgan trains on"):
        load_config(ws / "params.yaml", ["data.name=captions"], write=False)


def test_vocabulary_is_deterministic_versioned_and_from_training_rows_only(tmp_path):
    texts = [["a red circle"], ["a blue square", "blue, square!"], ["a RED square"], ["a green triangle"]]
    images = np.arange(4 * 64, dtype=np.uint8).reshape(4, 1, 8, 8)
    c = caption_data(texts, heldout=1)
    assert c.vocabulary == caption_data([list(t) for t in texts], heldout=1).vocabulary
    assert c.vocabulary.tokens[:3] == ("a", "square", "blue")  # by falling count, then alphabetically
    assert "green" not in c.vocabulary.tokens and UNK in c.tokens[3, 0]  # the held-out row's new word
    assert c.tokens.shape == (4, 2, c.vocabulary.max_tokens) and not c.tokens[0, 1].any()

    m = write_prepared(tmp_path / "v", images, None, {"heldout": 1}, captions=c)
    assert m["kind"] == "captioned" and {"captions.npy", "vocab.json", "captions.json"} <= set(m["files"])
    assert m["vocabulary"]["size"] == c.vocabulary.size and m["vocabulary"]["tokenizer"] == c.vocabulary.tokenizer
    ds = load_prepared(tmp_path / "v")
    assert ds.vocabulary == c.vocabulary and np.array_equal(ds.captions, c.tokens) and ds.caption_texts == texts
    aligned, _ = training_arrays(ds)
    assert list(aligned["caption_counts"]) == [1, 2, 1] and aligned["captions"].shape[0] == 3
    held = heldout_captions(ds)
    assert held.texts == [["a green triangle"]] and list(held.counts) == [1] and held.attributes is None

    # the content hash covers the captions and their vocabulary; other kinds' hashes are unchanged
    assert content_hash(images, None) == content_hash(images, None, None, None) != m["content_sha256"]
    for changed in ([["a red circle"], *texts[1:3], ["a green circle"]],  # a held-out caption
                    [["a Red circle"], *texts[1:]]):  # the same ids, another text
        assert content_hash(images, None, None, caption_data(changed, 1)) != m["content_sha256"]
    (tmp_path / "v" / "vocab.json").write_text(json.dumps({**c.vocabulary.to_dict(), "tokens": ["x"]}))
    with pytest.raises(DataError, match="vocab.json: sha256 differs"):
        load_prepared(tmp_path / "v")


def test_the_builtin_is_offline_balanced_and_captioned_by_its_attributes(tmp_path):
    images, c, meta = caption_builtin("captions", 32, 3)
    assert images.shape == (2048, 3, 32, 32) and meta["kind"] == "captioned" and meta["heldout"] == 205
    assert c.attributes.shape == (2048, 4) and list(c.attribute_names) == ["colour", "shape", "size", "position"]
    assert all((parse(t) == a).all() for caps, a in zip(c.texts[:50], c.attributes) for t in caps)
    again = caption_builtin("captions", 32, 3)
    assert np.array_equal(again[0], images) and again[1].vocabulary == c.vocabulary  # the same every time
    m = write_prepared(tmp_path / "captions", images, None, {"name": "captions", **meta}, captions=c)
    ds = load_prepared(tmp_path / "captions")
    assert m["attributes"]["names"] == ["colour", "shape", "size", "position"] and "attributes.npy" in m["files"]
    held = heldout_captions(ds)
    assert len(held.images) == 205 and np.array_equal(held.attributes, c.attributes[-205:])


@pytest.mark.slow
def test_a_captioned_version_is_dvc_tracked_with_its_vocabulary(tmp_path):
    ws = make_workspace(tmp_path)
    s = load_settings({"GANPIPE_WORKSPACE": str(ws), "GANPIPE_HOME": str(ws / ".ganpipe")})
    src = source(tmp_path / "caps", "jsonl")
    first = add(s, "caps", str(src), FAIL, kind="captioned")
    assert first["created"] and not add(s, "caps", str(src), FAIL, kind="captioned")["created"]
    folder = Path(first["path"])
    ds = load_prepared(folder)
    entry = catalog.load(ws)["datasets"]["caps"]["versions"]["v1"]
    assert entry["kind"] == "captioned" and entry["vocabulary"] == ds.manifest["vocabulary"] and ds.heldout == 1
    assert sorted(map(tuple, ds.caption_texts)) == sorted(tuple(c) for c in CAPTIONS.values())
    st = subprocess.run([str(BIN / "dvc"), "status", "--cloud", "-r", "ganpipe-local", "--json"], cwd=ws,
                        env=env_for(ws), capture_output=True, text=True)
    assert json.loads(st.stdout or "{}") == {}, st.stdout + st.stderr  # vocab.json and the rest are pushed
    shown = show(s, "caps", None, None)
    assert len(shown["captions"]) == 5 and all(c in map(list, CAPTIONS.values()) for c in shown["captions"].values())

    (src / "captions.jsonl").write_bytes(jsonl({**CAPTIONS, "0.png": ["a darker square"]}))  # one caption edited
    second = add(s, "caps", str(src), FAIL, kind="captioned")
    assert second["version"] == "v2" and second["content_sha256"] != first["content_sha256"]
    cli = ganpipe(ws, "dataset", "list")
    assert cli.returncode == 0 and "captioned" in cli.stdout and f"vocabulary={ds.vocabulary.size}" in cli.stdout
