import math

import torch

from gan_core.losses import hinge_d, hinge_g, nonsat_d, nonsat_g


def test_nonsat_closed_forms():
    z = torch.zeros(5)
    assert math.isclose(nonsat_d(z, z).item(), 2 * math.log(2), rel_tol=1e-6)  # D undecided: 2 log 2
    assert math.isclose(nonsat_g(z).item(), math.log(2), rel_tol=1e-6)
    real, fake = torch.tensor([3.0]), torch.tensor([-2.0])
    expected = math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-2.0))
    assert math.isclose(nonsat_d(real, fake).item(), expected, rel_tol=1e-6)
    # confident, correct D -> loss near 0; G's loss is large when D rejects its samples
    assert nonsat_d(torch.tensor([50.0]), torch.tensor([-50.0])).item() < 1e-6
    assert math.isclose(nonsat_g(torch.tensor([-50.0])).item(), 50.0, rel_tol=1e-6)


def test_hinge_closed_forms():
    assert hinge_d(torch.zeros(3), torch.zeros(3)).item() == 2.0
    assert hinge_d(torch.tensor([1.5]), torch.tensor([-1.5])).item() == 0.0  # beyond the margins
    assert math.isclose(hinge_d(torch.tensor([0.25]), torch.tensor([0.5])).item(), 0.75 + 1.5)
    assert hinge_g(torch.tensor([1.0, 3.0])).item() == -2.0


def test_gradients_point_the_right_way():
    fake = torch.zeros(4, requires_grad=True)
    nonsat_g(fake).backward()
    assert (fake.grad < 0).all()  # G's loss falls as D's logit on fakes rises


def test_wasserstein_is_the_mean_gap():
    from gan_core.losses import wasserstein_d, wasserstein_g

    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert wasserstein_d(real, fake).item() == 0.0 - 3.0
    assert wasserstein_g(fake).item() == 0.0


def test_gradient_penalty_on_known_critics():
    from gan_core.losses import gradient_penalty

    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    eps = torch.rand(4, 1, 1, 1)
    unit = lambda x: x.flatten(1).sum(1) / 2.0  # gradient (1/2, ...) over 4 pixels: norm exactly 1  # noqa: E731
    assert gradient_penalty(unit, real, fake, eps).item() < 1e-10
    steep = lambda x: 3.0 * x.flatten(1).sum(1) / 2.0  # norm 3 -> (3 - 1)^2  # noqa: E731
    assert math.isclose(gradient_penalty(steep, real, fake, eps).item(), 4.0, rel_tol=1e-5)
    w = torch.tensor(1.5, requires_grad=True)
    gradient_penalty(lambda x: w * unit(x), real, fake, eps).backward()  # penalty is differentiable in D's weights
    assert math.isclose(w.grad.item(), 2 * (1.5 - 1), rel_tol=1e-5)


def test_orthogonal_penalty_is_zero_for_orthogonal_rows():
    from gan_core.losses import orthogonal_penalty

    q, _ = torch.linalg.qr(torch.randn(5, 5))
    assert orthogonal_penalty([q * 3]).item() < 1e-8  # norms are free, only overlaps count
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert math.isclose(orthogonal_penalty([w]).item(), 2.0)  # off-diagonal gram entries 1 and 1


def test_info_loss_rewards_reading_the_code_back():
    from gan_core.losses import info_loss

    cat = torch.tensor([0, 1, 2])
    right = torch.eye(3) * 10
    wrong = torch.roll(torch.eye(3), 1, 0) * 10
    cont = torch.tensor([[0.5], [-0.5], [0.0]])
    assert info_loss(right, cont, cat, cont) < 0.01 < info_loss(wrong, cont, cat, cont)
    assert math.isclose(info_loss(right, cont + 1, cat, None).item(), info_loss(right, cont, cat, None).item())


def test_lsgan_closed_forms():
    from gan_core.losses import LOSSES, lsgan_d, lsgan_g

    assert lsgan_d(torch.ones(3), torch.zeros(3)).item() == 0.0  # D hits both targets exactly
    assert lsgan_d(torch.zeros(2), torch.ones(2)).item() == 2.0  # both targets missed by 1
    # real (3 - 1)^2 = 4 and (-1 - 1)^2 = 4 -> 4; fake 0.5^2 = 0.25 and (-0.5)^2 -> 0.25
    assert math.isclose(lsgan_d(torch.tensor([3.0, -1.0]), torch.tensor([0.5, -0.5])).item(), 4.25)
    assert math.isclose(lsgan_g(torch.tensor([1.0, -1.0])).item(), 2.0)  # (0 + 4) / 2
    fake = torch.full((4,), 3.0, requires_grad=True)
    lsgan_g(fake).backward()  # d/dx mean((x - 1)^2) = 2 (x - 1) / n: non-vanishing for a confident D
    assert torch.allclose(fake.grad, torch.full((4,), 1.0))
    assert LOSSES["lsgan"].d is lsgan_d and LOSSES["lsgan"].g is lsgan_g
