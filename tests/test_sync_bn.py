"""Global BatchNorm: 2 processes with half the batch each equal 1 process with the whole batch."""

import torch
from distributed import run_distributed

from selfsup.models.sync_bn import convert_to_global_bn


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 6), torch.nn.BatchNorm1d(6))


def _batch():
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _step(net, x, scale):
    out = net(x)
    (out.pow(2).sum() * scale).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    return out.detach(), grads, [b.clone() for b in net.buffers()]


def _rank(rank, world):
    net = convert_to_global_bn(_net())
    x = _batch()[rank * 4 : (rank + 1) * 4]
    out, grads, bufs = _step(net, x, 1.0)
    for g in grads:  # what DDP does: average the gradients over ranks
        torch.distributed.all_reduce(g)
        g /= world
    return out, grads, bufs


def test_two_processes_equal_one_big_batch():
    ref_out, ref_grads, ref_bufs = _step(_net(), _batch(), 0.5)  # mean of the two ranks' losses
    results = run_distributed(_rank, 2)
    out = torch.cat([r[0] for r in results])
    assert torch.allclose(out, ref_out, atol=1e-5)
    for r in results:
        assert all(torch.allclose(g, rg, atol=1e-5) for g, rg in zip(r[1], ref_grads))
        assert all(torch.allclose(b.float(), rb.float(), atol=1e-5) for b, rb in zip(r[2], ref_bufs))


def test_single_process_is_plain_batchnorm():
    x = _batch()
    ref = _net()(x)
    assert torch.allclose(convert_to_global_bn(_net())(x), ref, atol=1e-6)


def test_conversion_keeps_a_frozen_copy_frozen():
    from selfsup.models import momentum_copy

    net = _net()
    target = momentum_copy(net)
    both = convert_to_global_bn(torch.nn.ModuleDict({"online": net, "target": target}))
    assert all(p.requires_grad for p in both["online"].parameters())
    assert not any(p.requires_grad for p in both["target"].parameters())
