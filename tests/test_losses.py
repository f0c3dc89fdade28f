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
