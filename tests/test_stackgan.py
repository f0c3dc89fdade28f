"""stackgan (gan_core/models/stackgan.py, gan_core/text.py) and the text-alignment score
(gan_core/metrics/alignment.py): shapes, one step per stage, the checkpoint round trip, an exact
resume across the stage change, export (token ids in, images out) and DDP. How well it learns:
tests/test_stackgan_learning.py.
"""
import copy
import io
import sys

import numpy as np
import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))  # workspace, servers
import torch

from gan_core.captions import PAD, UNK, Vocabulary, captioned_shapes, counts_of, encode_all, parse
from gan_core.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from gan_core.losses import LOSSES
from gan_core.metrics import alignment as align
from gan_core.models.stackgan import Options, build_discriminator, build_generator, stage1_steps, step
from gan_core.state import TrainState
from gan_core.text import TextEncoder, pick_captions


def make_state(res=32, width=8, seed=0, options=Options(stage1_steps=2), lr=2e-4) -> TrainState:
    torch.manual_seed(seed)
    m, d = ModelConfig(g_channels=width, d_channels=width, z_dim=16), DataConfig(resolution=res, channels=3)
    G, D = build_generator(m, d, 0, options), build_discriminator(m, d, 0, options)
    return TrainState(family=None, G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
                      opt_g=torch.optim.Adam(G.parameters(), lr, betas=(0.5, 0.999)),
                      opt_d=torch.optim.Adam(D.parameters(), lr, betas=(0.5, 0.999)),
                      loss=LOSSES["nonsat"], device=torch.device("cpu"), options=options)


def shapes_data(n=2048, res=32, heldout=256, seed=0) -> dict:
    """The built-in captioned shapes as C's prepared format holds them: NCHW uint8, (N, K, L) ids of
    a vocabulary built from the training rows only, counts, attributes; the last `heldout` rows held out."""
    images, captions, attributes = captioned_shapes(n, res, seed)
    vocab = Vocabulary.build([c for cs in captions[:n - heldout] for c in cs])
    tokens = encode_all(vocab, captions)
    return {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), "captions": torch.from_numpy(tokens),
            "caption_counts": torch.from_numpy(counts_of(tokens)), "attributes": attributes, "texts": captions,
            "vocab": vocab, "train": n - heldout}


def batch_of(data: dict, rows) -> dict:
    return {k: data[k][rows] for k in ("images", "captions", "caption_counts")}


def weights(*models) -> list[torch.Tensor]:
    return [t.detach().clone() for m in models for t in m.state_dict().values() if torch.is_tensor(t)]


def changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.fixture(scope="module")
def data():
    return shapes_data(n=256, heldout=32)


# ---------------------------------------------------------------- networks
def test_shapes_of_g_d_and_the_text_encoder(data):
    state = make_state()
    tokens, z = data["captions"][:5, 0], torch.randn(5, 16)
    G, D = state.G, state.D
    x1, kl = G(tokens, z, 1, True)
    x2, kl2 = G(tokens, z, 2, True)
    assert x1.shape == (5, 3, 16, 16) and x2.shape == (5, 3, 32, 32) and kl.ndim == kl2.ndim == 0
    assert D(x1, tokens).shape == D(x2, tokens).shape == (5,)
    G.eval()
    assert G(tokens, z).shape == (5, 3, 32, 32) and G(tokens, z).abs().max() <= 1
    # padding never matters, ids past the encoder's capacity read as UNK
    enc = TextEncoder(10, 4).eval()
    ids = torch.tensor([[2, 3, 4, 0, 0, 0]])
    assert torch.allclose(enc(ids), enc(ids[:, :3]), atol=1e-6)
    assert torch.equal(enc(torch.tensor([[2, 99]])), enc(torch.tensor([[2, UNK]])))


def test_pick_captions_takes_only_real_rows():
    caps = torch.zeros(64, 3, 4, dtype=torch.long)
    caps[:, 0, 0], caps[:32, 1, 0] = 5, 6  # the first half has 2 captions, the rest 1
    counts = torch.from_numpy(counts_of(caps.numpy()))
    torch.manual_seed(0)
    picked = pick_captions(caps, counts)
    assert (picked[:, 0] != PAD).all() and (picked[32:, 0] == 5).all() and set(picked[:32, 0].tolist()) == {5, 6}


@pytest.mark.parametrize("field, value", [("stage1_steps", -2), ("kl_weight", -1.0), ("c_dim", 0), ("vocab", 2)])
def test_options_errors_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        Options(**{field: value})
    assert err.value.field == f"family.{field}"


def test_resolution_must_be_a_power_of_two_of_at_least_16():
    with pytest.raises(ConfigError) as err:
        build_generator(ModelConfig(), DataConfig(resolution=24), 0, Options())
    assert err.value.field == "data.resolution"


def test_stage1_steps_defaults_to_half_and_must_fit_the_run():
    from gan_core.config import PipelineConfig

    assert stage1_steps(Options(), TrainConfig(steps=10)) == 5
    cfg = {"model": {"arch": "stackgan"}, "train": {"steps": 10}, "family": {"stackgan": {"stage1_steps": 11}}}
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_dict(cfg)
    assert err.value.field == "family.stackgan.stage1_steps"


# ---------------------------------------------------------------- the train step
def test_stage_one_step_trains_stage_one_only(data):
    state = make_state()
    G = state.G
    s1 = weights(G.encoder, G.ca1, G.g1, state.D.d1)
    s2 = weights(G.ca2, G.g2, state.D.d2)
    out = step(state, [batch_of(data, slice(0, 16))], TrainConfig())
    assert state.extra["stage"] == 1 and int(G.stage) == 1
    assert {"loss_d", "loss_g", "kl"} <= set(out) and all(v.isfinite() for v in out.values())
    assert changed(s1, weights(G.encoder, G.ca1, G.g1, state.D.d1))
    assert not changed(s2, weights(G.ca2, G.g2, state.D.d2))


def test_stage_two_step_freezes_stage_one(data):
    state = make_state()
    state.step = 2  # stage1_steps = 2: the next step is Stage II's first
    G = state.G
    s1 = weights(G.encoder, G.ca1, G.g1, state.D.d1)  # BN running statistics included
    s2 = weights(G.ca2, G.g2, state.D.d2)
    out = step(state, [batch_of(data, slice(0, 16))], TrainConfig())
    assert state.extra["stage"] == 2 and int(G.stage) == 2 and state.G_ema.current == 2
    assert all(v.isfinite() for v in out.values())
    assert not changed(s1, weights(G.encoder, G.ca1, G.g1, state.D.d1))
    assert changed(s2, weights(G.ca2, G.g2, state.D.d2))


def test_matching_aware_d_loss_in_closed_form(data):
    """loss_d = 1/2 [loss.d(D(x, t), D(x, t_wrong)) + loss.d(D(x, t), D(G(t, z), t))] with t_wrong
    the batch's captions rolled by one; recomputed from the same RNG state before the step."""
    from gan_core.resample import downsample

    state = make_state()
    b = batch_of(data, slice(0, 16))
    G0, D0 = copy.deepcopy(state.G), copy.deepcopy(state.D)
    torch.manual_seed(7)
    out = step(state, [b], TrainConfig())
    torch.manual_seed(7)
    tokens = pick_captions(b["captions"], b["caption_counts"])
    z = torch.randn(16, 16)
    real = downsample(b["images"].float() / 127.5 - 1, 2)
    fake, _ = G0(tokens, z, 1, True)
    nonsat = LOSSES["nonsat"].d
    lr = D0(real, tokens)
    want = 0.5 * (nonsat(lr, D0(real, tokens.roll(1, 0))) + nonsat(lr, D0(fake, tokens)))
    assert torch.allclose(out["loss_d"], want, atol=1e-5)


def _run(state, batches):
    for b in batches:
        step(state, [b], TrainConfig())
        state.step += 1


def test_checkpoint_round_trip_keeps_the_stage(data):
    state = make_state()
    _run(state, [batch_of(data, slice(0, 16))] * 3)  # into Stage II
    buf = io.BytesIO()
    torch.save(state.G.state_dict(), buf)
    buf.seek(0)
    fresh = make_state(seed=5).G
    assert fresh.current == 1
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.current == 2 and all(not m.training for m in fresh.frozen())
    tokens, z = data["captions"][:4, 0], torch.randn(4, 16)
    assert torch.equal(fresh.eval()(tokens, z), state.G.eval()(tokens, z))


def test_resume_across_the_stage_change_is_exact(data):
    """5 steps straight == 1 step, save/load of everything a checkpoint holds, 4 more (stage1_steps 2:
    the stage changes after the resume)."""
    opts = Options(stage1_steps=2)
    batches = [batch_of(data, slice(16 * i, 16 * i + 16)) for i in range(5)]
    straight = make_state(options=opts)
    torch.manual_seed(123)
    _run(straight, batches)

    first = make_state(options=opts)
    torch.manual_seed(123)
    _run(first, batches[:1])
    buf = io.BytesIO()
    torch.save({"G": first.G.state_dict(), "D": first.D.state_dict(), "G_ema": first.G_ema.state_dict(),
                "opt_g": first.opt_g.state_dict(), "opt_d": first.opt_d.state_dict(), "rng": torch.get_rng_state(),
                "extra": first.extra, "step": first.step}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    resumed = make_state(options=opts, seed=99)  # different init: everything must come from the checkpoint
    for name in ("G", "D", "G_ema", "opt_g", "opt_d"):
        getattr(resumed, name).load_state_dict(ck[name])
    torch.set_rng_state(ck["rng"])
    resumed.extra, resumed.step = dict(ck["extra"]), ck["step"]
    assert resumed.extra["stage"] == 1
    _run(resumed, batches[1:])
    assert straight.extra == resumed.extra == {"stage": 2}
    for a, b in zip(weights(straight.G, straight.D), weights(resumed.G, resumed.D)):
        assert torch.equal(a, b)


def test_export_takes_token_ids_and_z(data):
    from torch.export import Dim

    state = make_state()
    _run(state, [batch_of(data, slice(0, 16))] * 3)
    G = state.G.eval()
    tokens, z = data["captions"][:2, 0], torch.randn(2, 16)
    batch = Dim("batch", min=1, max=1024)
    program = torch.export.export(G, (tokens, z), dynamic_shapes=({0: batch}, {0: batch}))
    tokens, z = data["captions"][:5, 1], torch.randn(5, 16)
    with torch.no_grad():
        out = program.module()(tokens, z)
        assert out.shape == (5, 3, 32, 32) and torch.allclose(out, G(tokens, z), atol=1e-5)


# ---------------------------------------------------------------- through the pipeline's checkpoint and CLI
TINY = {"model": {"arch": "stackgan", "g_channels": 8, "d_channels": 8, "z_dim": 16},
        "data": {"name": "captions", "resolution": 32, "channels": 3},
        "train": {"steps": 4, "batch_size": 16}, "family": {"stackgan": {"stage1_steps": 2}}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data):
    """A 3-step run (into Stage II) through build_state and the checkpoint format, carrying its vocabulary."""
    from gan_core.checkpoint import rng_state, save_checkpoint, to_checkpoint
    from gan_core.config import PipelineConfig
    from gan_core.text import attach_vocabulary
    from gan_core.train import build_state

    cfg = PipelineConfig.from_dict(TINY)
    torch.manual_seed(0)
    state = build_state(cfg)
    attach_vocabulary(state, data["vocab"])
    _run(state, [batch_of(data, slice(0, 16))] * 3)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, to_checkpoint(state, cfg, [rng_state()]))
    return path


def test_rebuilt_checkpoint_keeps_stage_and_vocabulary(checkpoint, data):
    from gan_core.checkpoint import load_checkpoint, rebuild
    from gan_core.text import draw_text

    cfg, state = rebuild(load_checkpoint(checkpoint))
    G = state.G_ema
    assert G.current == 2 and G.vocabulary == data["vocab"].to_dict() and state.extra["stage"] == 2
    meta = G.export_meta()
    a, unknown = draw_text(G, meta, "a large blue square", 3, seed=1)
    b, _ = draw_text(G, meta, "a small red circle", 3, seed=1)
    assert a.shape == (3, 3, 32, 32) and unknown == [] and not torch.equal(a, b)
    assert draw_text(G, meta, "a purple square", 1, seed=1)[1] == ["purple"]
    with pytest.raises(ValueError, match="--text"):
        draw_text(G, meta, None, 1, seed=1)
    with pytest.raises(ValueError, match="no words"):
        draw_text(G, meta, "!!", 1, seed=1)
    with pytest.raises(ValueError, match="text-to-image"):
        draw_text(G, {}, "a red square", 1, seed=1)


def test_cli_samples_a_caption_from_a_checkpoint(checkpoint, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app
    from workspace import env_for, make_workspace

    ws = make_workspace(tmp_path)
    monkeypatch.chdir(ws)
    env = env_for(ws)
    out = tmp_path / "blue.png"
    r = CliRunner().invoke(app, ["sample", str(checkpoint), "--text", "a large blue square", "--n", "4",
                                 "--out", str(out)], env=env)
    assert r.exit_code == 0, r.output
    assert out.is_file()
    r = CliRunner().invoke(app, ["sample", str(checkpoint), "--n", "4", "--out", str(out)], env=env)
    assert r.exit_code != 0 and "--text" in r.output


def test_registered_program_takes_token_ids_and_carries_the_vocabulary(checkpoint, tmp_path):
    """As registration exports it (pt2, dynamic batch) and as `sample --text` reads it back."""
    import mlflow.pytorch
    from mlflow.models import Model

    from flows.serving.model import generator_from
    from flows.stages.register import export_args
    from gan_core.checkpoint import load_checkpoint, rebuild
    from gan_core.text import draw_text

    cfg, state = rebuild(load_checkpoint(checkpoint))
    G = state.family.infer(state.G_ema.eval())
    mlflow.pytorch.save_model(G, str(tmp_path / "m"), **export_args(cfg, G))
    model = Model.load(str(tmp_path / "m"))
    meta = model.metadata
    assert meta["conditioning"] == "text" and meta["vocabulary"] == G.vocabulary and meta["stage"] == 2
    loaded = generator_from(mlflow.pytorch.load_model(str(tmp_path / "m")), meta, model.signature)
    for n in (1, 5):
        want, _ = draw_text(G, G.export_meta(), "a small green cross at the top left", n, seed=3)
        got, _ = draw_text(loaded, loaded.exported_as, "a small green cross at the top left", n, seed=3)
        assert got.shape == (n, 3, 32, 32) and torch.allclose(want, got, atol=1e-5)


def test_text_evaluator_scores_heldout_captions(data):
    """FID with the dataset's backbone, alignment and its chance on held-out captions, cycled."""
    from gan_core.data import HeldoutCaptions
    from gan_core.metrics.fid import Fingerprint

    class Base:  # stands for the FID evaluator: what it was given and a fixed fingerprint
        def score_images(self, images, batch_size, seed):
            self.seen = images
            return {"fid_6": 1.0}, None

        def fingerprint(self, n):
            return Fingerprint("domain-classifier", "ab", "none", "[-1,1]", 10, n, "cd")

    n0 = data["train"]
    held = HeldoutCaptions(data["images"][n0:n0 + 2].numpy(), data["captions"][n0:n0 + 2].numpy(),
                           data["caption_counts"][n0:n0 + 2].numpy(), data["texts"][n0:n0 + 2],
                           data["attributes"][n0:n0 + 2])
    clf, _ = align.train_attributes(data["images"][:64].numpy(), data["attributes"][:64], epochs=1)
    ev = align.TextEvaluator(Base(), held, clf)
    tokens, rows, ks = ev.captions(6)
    assert rows == [0, 1, 0, 1, 0, 1] and ks == [0, 0, 1, 1, 2, 2]
    G = make_state().G
    scores, fp = ev.evaluate(G, 6, seed=0, batch_size=4)
    assert set(scores) == {"fid_6", "alignment_6", "alignment_6_chance"} and 0 <= scores["alignment_6"] <= 1
    assert fp.backbone == "domain-classifier+attribute-classifier" and fp.weights_sha256.startswith("ab+")
    assert torch.equal(ev.samples(G, 6, 0, 4), ev.base.seen)  # same seed, same images


def test_prepared_captioned_dataset_builds_and_serves_the_text_evaluator(tmp_path):
    """Prepare's evaluator step on captioned data (attribute classifier on the training rows, FID backbone
    on the attribute combinations), then what the evaluate stage gets for stackgan: FID + alignment."""
    from gan_core.captions import ATTRIBUTES
    from gan_core.data import caption_data, load_manifest, write_prepared
    from gan_core.metrics.evaluator import build_evaluator, evaluator_for
    from gan_core.models import get_family

    images, texts, attributes = captioned_shapes(96, 16, seed=1)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    meta = {"name": "tiny-captions", "heldout": 16}
    info = {}
    write_prepared(tmp_path / "p", images, None, meta, captions=caption_data(texts, 16, attributes, ATTRIBUTES),
                   extras=lambda tmp, m: info.update(build_evaluator(tmp, images, None, m)))
    assert {"attribute-classifier", "domain-classifier"} <= set(info)
    family = get_family("stackgan")
    ev = evaluator_for(family, Options(), tmp_path / "p", load_manifest(tmp_path / "p"))
    G = make_state(res=16).G
    scores, fp = ev.evaluate(G, 20, seed=0, batch_size=8)
    assert {"fid_20", "alignment_20", "alignment_20_chance"} <= set(scores) and np.isfinite(scores["fid_20"])
    assert fp.weights_sha256.endswith(info["attribute-classifier"]["weights_sha256"])


# ---------------------------------------------------------------- DDP
def _ddp_rank(rank: int) -> tuple[int, int]:
    from gan_core.config import PipelineConfig
    from gan_core.replicas import check_replicas
    from gan_core.train import build_state, distribute, train

    cfg = PipelineConfig.from_dict({**TINY, "train": {"steps": 4, "batch_size": 16, "num_workers": 2}})
    torch.manual_seed(0)  # identical initial weights on both ranks, as the Ray worker does
    state = distribute(build_state(cfg, "cpu"), 2)
    torch.manual_seed(1 + rank)
    d = shapes_data(n=64, heldout=0)
    rows = torch.arange(rank, 64, 2)
    train(state, (batch_of(d, rows[i % 4 * 8:(i % 4 + 1) * 8]) for i in range(100)), cfg)
    check_replicas({"G": state.G, "D": state.D}, state.step)  # raises where gradients were not averaged
    return state.step, state.extra["stage"]


@pytest.mark.timeout(300)
def test_ddp_trains_both_stages_with_replicas_in_step():
    from gloo import ranks

    assert ranks(_ddp_rank) == {0: (4, 2), 1: (4, 2)}


# ---------------------------------------------------------------- text alignment
def test_alignment_and_chance_in_closed_form():
    class Fixed(torch.nn.Module):  # reads every image as attributes (0, 1, 0, 2)
        sizes = align.SIZES

        def forward(self, x):
            return [torch.nn.functional.one_hot(torch.full((len(x),), v), k).float()
                    for v, k in zip((0, 1, 0, 2), align.SIZES)]

    wanted = np.array([[0, 1, 0, 2], [1, -1, -1, 2], [-1, -1, -1, 3]])
    assert align.alignment(Fixed(), torch.zeros(3, 3, 8, 8), wanted) == pytest.approx((1 + 0.5 + 0) / 3)
    per_row = ((1 / 4 + 1 / 4 + 1 / 2 + 1 / 4) / 4, (1 / 4 + 1 / 4) / 2, 1 / 4)
    assert align.chance(wanted) == pytest.approx(sum(per_row) / 3)
    assert (parse("a large blue square") == [2, 0, 1, -1]).all()
