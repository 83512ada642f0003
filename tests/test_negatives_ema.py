import math

import torch
import torch.nn.functional as F

from selfsup.models import ema_update, momentum_at, momentum_copy
from selfsup.negatives import InBatch, MemoryBank, Queue


def test_queue_is_fifo_with_wrap_around_and_detached():
    q = Queue(size=5, dim=2)
    keys = torch.arange(14, dtype=torch.float32).view(7, 2).requires_grad_()
    q.update(keys[:3])
    q.update(keys[3:7])  # 7 keys into 5 slots: slots 0, 1 are overwritten by keys 5, 6
    assert torch.equal(q.queue, torch.stack([keys[5], keys[6], keys[2], keys[3], keys[4]]).detach())
    assert int(q.ptr) == 2 and q.full and not q.queue.requires_grad
    assert q.negatives().data_ptr() != q.queue.data_ptr()  # a snapshot, not the live buffer


def test_memory_bank_updates_exactly_the_indexed_rows():
    bank = MemoryBank(size=6, dim=4, momentum=0.5)
    before = bank.bank.clone()
    f = torch.randn(2, 4, requires_grad=True)
    idx = torch.tensor([1, 4])
    bank.update(f, idx)
    expected = F.normalize(0.5 * before[idx] + 0.5 * f.detach(), dim=1)
    assert torch.allclose(bank.bank[idx], expected)
    untouched = torch.tensor([0, 2, 3, 5])
    assert torch.equal(bank.bank[untouched], before[untouched])
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(6))
    assert not bank.bank.requires_grad


def test_in_batch_source_stores_nothing():
    src = InBatch()
    assert src.in_batch and src.negatives() is None and not list(src.buffers())


def test_ema_target_gets_no_gradient_and_follows_the_formula():
    online = torch.nn.Linear(3, 2)
    target = momentum_copy(online)
    t0 = [p.clone() for p in target.parameters()]
    (target(torch.randn(4, 3)).sum() + online(torch.randn(4, 3)).sum()).backward()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    m, k = 0.9, 5
    for _ in range(k):
        ema_update(target, online, m)
    for t, t_init, o in zip(target.parameters(), t0, online.parameters()):
        assert torch.allclose(t, m**k * t_init + (1 - m**k) * o.detach(), atol=1e-6)


def test_byol_momentum_schedule():
    assert momentum_at(0, 100, 0.996) == 0.996
    assert momentum_at(100, 100, 0.996) == 1.0
    assert math.isclose(momentum_at(50, 100, 0.996), 1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2)
    assert momentum_at(30, 100, 0.99, schedule="constant") == 0.99
