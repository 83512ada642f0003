import math

import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.losses import nt_xent


def naive_nt_xent(z1, z2, t):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sims = [float(z[i] @ z[k]) / t for k in range(n2)]
        denom = sum(math.exp(sims[k]) for k in range(n2) if k != i)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(4, 8, 0.5), (7, 3, 0.1), (16, 32, 1.0)])
def test_nt_xent_matches_naive_loop(n, d, t):
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert nt_xent(z1, z2, t).item() == pytest.approx(naive_nt_xent(z1, z2, t), abs=1e-5)


def test_nt_xent_symmetric_and_scale_invariant():
    z1, z2 = torch.randn(10, 16), torch.randn(10, 16)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(z2, z1), atol=1e-6)
    assert torch.allclose(nt_xent(3 * z1, 0.5 * z2), nt_xent(z1, z2), atol=1e-5)


def test_nt_xent_lower_for_aligned_views_and_has_gradients():
    z1 = torch.randn(32, 16, requires_grad=True)
    aligned = nt_xent(z1, z1.detach() + 0.01 * torch.randn(32, 16))
    random = nt_xent(z1, torch.randn(32, 16))
    assert aligned < random
    random.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_nt_xent_rejects_bad_input():
    with pytest.raises(SelfSupError, match="one shape"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(SelfSupError, match="temperature"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), 0.0)
