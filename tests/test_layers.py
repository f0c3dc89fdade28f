import torch

from gan_core.latent import LatentSpec
from gan_core.layers import DHead, MinibatchDiscrimination, MinibatchStdDev, SelfAttention


def test_minibatch_discrimination_sees_collapse():
    torch.manual_seed(0)
    mbd = MinibatchDiscrimination(6, kernels=4, dims=3)
    varied = torch.randn(8, 6) * 3
    same = torch.randn(1, 6).repeat(8, 1)
    o_varied, o_same = mbd(varied)[:, 6:], mbd(same)[:, 6:]
    assert o_same.shape == (8, 4)
    assert torch.allclose(o_same, torch.full_like(o_same, 7.0))  # 7 identical neighbours: exp(0) each
    assert (o_varied < o_same).all()


def test_minibatch_stddev_is_zero_for_identical_samples_and_per_group():
    layer = MinibatchStdDev(group=4)
    same = torch.ones(8, 5)
    assert torch.allclose(layer(same)[:, -1], torch.full((8,), 1e-4), atol=1e-4)
    x = torch.zeros(8, 5)
    x[0] = 2.0  # group of sample 0 is {0, 2, 4, 6} (i % 2 == 0)
    stat = layer(x)[:, -1]
    assert (stat[0::2] > 0.5).all() and (stat[1::2] < 1e-3).all()


def test_projection_head_depends_on_the_label_and_q_head_on_the_image_only():
    torch.manual_seed(0)
    head = DHead(6, n_classes=3)
    h = torch.randn(4, 6)
    assert not torch.allclose(head(h, torch.zeros(4, dtype=torch.long)), head(h, torch.ones(4, dtype=torch.long)))
    q = DHead(6, minibatch="mbd", code_cat=5, code_cont=2)
    logits, cat, cont = q(h)
    assert logits.shape == (4,) and cat.shape == (4, 5) and cont.shape == (4, 2)
    _, cat2, _ = q(torch.cat([h[:1], torch.randn(3, 6)]))
    assert torch.allclose(cat[:1], cat2[:1])  # the batch around an image does not change its codes


def test_self_attention_starts_as_identity_and_mixes_positions():
    torch.manual_seed(0)
    attn = SelfAttention(16, sn=False)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attn(x), x)  # gamma = 0
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    y = x.clone()
    y[:, :, 0, 0] += 5  # a change in one corner ...
    assert not torch.allclose(attn(y)[:, :, 7, 7], attn(x)[:, :, 7, 7])  # ... reaches the opposite one


def test_latent_spec_layout_and_balanced_labels():
    spec = LatentSpec(4, 0, code_cat=3, code_cont=2)
    lat = spec.sample(6, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert lat.z.shape == (6, 9) and lat.inputs == (lat.z,)
    assert torch.equal(lat.z[:, 4:7].argmax(1), lat.cat) and lat.z[:, 4:7].sum(1).eq(1).all()
    assert lat.z[:, 7:].abs().max() <= 1
    cond = LatentSpec(4, n_classes=3).sample(7)
    assert cond.y.tolist() == [0, 1, 2, 0, 1, 2, 0] and len(cond.inputs) == 2
    assert LatentSpec.from_dict(spec.to_dict()) == spec
