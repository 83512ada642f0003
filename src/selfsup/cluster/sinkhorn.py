"""Sinkhorn-Knopp equipartition of samples over prototypes, as SwAV (online, per batch) and SeLa
(offline, over the data set) use it to turn scores into balanced cluster assignments.

Both are multi-process aware: every sum over samples is all-reduced, so each rank gets its own
rows of the plan computed for the global batch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed
from torch import Tensor

from selfsup import dist
from selfsup.errors import SelfSupError


def _all_reduce_max(x: Tensor) -> Tensor:
    if dist.is_distributed():
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
    return x


def _autocast_off(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):
        # Device types without autocast support cannot be under autocast in the first place.
        return contextlib.nullcontext()


def _check_scores(scores: Tensor, what: str) -> None:
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise SelfSupError(f"{what} needs a (batch, prototypes) tensor, got {shape}")
    if scores.shape[0] < 1 or scores.shape[1] < 1:
        raise SelfSupError(f"{what} needs at least one sample and one prototype, "
                           f"got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise SelfSupError(f"{what} needs floating-point scores, got dtype {scores.dtype}")


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's online codes (Caron et al. 2020, "Unsupervised Learning of Visual Features by
    Contrasting Cluster Assignments", arXiv 2006.09882, Sec. 3.1 "Computing codes online": the
    solution Q* = Diag(u) exp(C^T Z / epsilon) Diag(v) of the entropy-regularised equipartition
    problem, with u, v found by the Sinkhorn-Knopp iterations of the appendix pseudo-code).

    Q = exp(C^T Z / epsilon), a (K, B) matrix over K prototypes and the B samples of the global
    batch, is scaled to sum to 1, then ``iterations`` times alternately: each prototype's row to
    1/K (equipartition), each sample's column to 1/B. The result is multiplied by B so every
    sample's code sums to 1 and returned as (B, K).

    ``scores``: (B_local, K) prototype scores of this rank's samples (SwAV: cosine similarities).
    Row sums over samples, the total and B are all-reduced, so each rank gets its own rows of
    the codes of the global batch. Computed in float32 without autograd, also under autocast.

    Per-prototype maxima (all-reduced) are subtracted before the exponential. That is a row
    scaling of Q, which the first row normalisation cancels exactly, so the codes equal the
    paper's; unlike the global maximum it keeps every prototype's largest entry at 1, so no row
    underflows to all zeros for small epsilon.
    """
    _check_scores(scores, "sinkhorn_knopp")
    if not epsilon > 0:
        raise SelfSupError(f"sinkhorn_knopp epsilon must be positive, got {epsilon}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise SelfSupError(f"sinkhorn_knopp iterations must be a positive integer, got {iterations!r}")
    with _autocast_off(scores.device.type):
        s = scores.detach().float()
        n_prototypes = s.shape[1]
        top = _all_reduce_max(s.max(dim=0).values)
        q = torch.exp((s - top) / epsilon).T.contiguous()
        batch = dist.all_reduce_sum(torch.tensor([float(s.shape[0])], device=s.device))
        # Guards against 0/0 only if a whole column underflows (scores more than ~87 epsilon
        # below every prototype's best): that sample then gets a zero code instead of NaN.
        tiny = torch.finfo(q.dtype).tiny
        q /= dist.all_reduce_sum(q.sum().reshape(1))
        for _ in range(iterations):
            q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min_(tiny)
            q /= n_prototypes
            q /= q.sum(dim=0, keepdim=True).clamp_min_(tiny)
            q /= batch
        q *= batch
        return q.T.contiguous()


@torch.no_grad()
def sinkhorn_sela(log_probs: Tensor, lamb: float = 25.0, tol: float = 1e-1, max_iterations: int = 1000,
                  return_plan: bool = False, distributed: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """SeLa's self-labelling step (Asano et al. 2020, "Self-labelling via simultaneous clustering
    and representation learning", arXiv 1911.05371, Sec. 3.1: the optimal labelling of the
    entropy-regularised equipartition problem is Q = diag(alpha) P^lambda diag(beta), found by
    Sinkhorn-Knopp).

    With P = p(y | x)^lambda (N, K), the transport plan Q = diag(c) P diag(r) with row sums 1/N
    and column sums 1/K is found by the Sinkhorn-Knopp updates, in float64,

        r <- (1/K) / (P^T c),    c <- (1/N) / (P r),

    starting from c = 1/N and stopping when sum_n |c_n / c_n' - 1| < ``tol`` or after
    ``max_iterations``. The authors' code uses this error with tol 0.1 in its ImageNet version
    (``sinkhornknopp.py``, the default here) and 1e-2 in its CIFAR script (``cifar.py``, SeLa's
    CIFAR recipe); it checks the error every 10 updates, here every update, so at one tolerance
    this may stop up to 9 updates sooner. Pseudo-labels are argmax_k Q[n, k].

    ``log_probs``: (N, K) log-probabilities (log-softmax of the head; raw logits give the same
    plan, since a per-sample shift is absorbed by c). Each row's maximum is subtracted before
    exp for the same reason, so P^lambda never underflows for a whole sample. Under
    torch.distributed, N and the sums over samples are all-reduced, so each rank labels its rows
    of the global problem. ``distributed=False``: every rank holds all N rows (an E-step over the
    whole data set) and solves the problem alone, without any collective.

    Returns labels (N,) long, or ``(labels, plan)`` with the float64 (N, K) plan Q when
    ``return_plan``.
    """
    if not distributed:
        with dist.local():
            return sinkhorn_sela(log_probs, lamb, tol, max_iterations, return_plan)
    _check_scores(log_probs, "sinkhorn_sela")
    if not lamb > 0:
        raise SelfSupError(f"sinkhorn_sela lamb must be positive, got {lamb}")
    if not tol > 0:
        raise SelfSupError(f"sinkhorn_sela tol must be positive, got {tol}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise SelfSupError(f"sinkhorn_sela max_iterations must be a positive integer, got {max_iterations!r}")
    lp = log_probs.detach().double()
    top = lp.max(dim=1, keepdim=True).values
    if torch.isnan(lp).any() or not bool(torch.isfinite(top).all()):
        raise SelfSupError("sinkhorn_sela got NaN log-probabilities or a sample with no finite entry; "
                           "pass log_softmax of finite logits")
    p = torch.exp(lamb * (lp - top))
    n_prototypes = p.shape[1]
    n = float(dist.all_reduce_sum(torch.tensor([float(p.shape[0])], dtype=torch.float64, device=p.device)))
    tiny = torch.finfo(p.dtype).tiny
    c = torch.full((p.shape[0],), 1.0 / n, dtype=torch.float64, device=p.device)
    r = torch.full((n_prototypes,), 1.0 / n_prototypes, dtype=torch.float64, device=p.device)
    for _ in range(max_iterations):
        # clamp: a prototype no sample reaches gets r huge but P zero, so 0 instead of NaN.
        r = (1.0 / n_prototypes) / dist.all_reduce_sum(p.T @ c).clamp_min_(tiny)
        c_new = (1.0 / n) / (p @ r).clamp_min_(tiny)
        err = float(dist.all_reduce_sum((c / c_new - 1).abs().sum().reshape(1)))
        c = c_new
        if err < tol:
            break
    plan = p * r
    labels = plan.argmax(dim=1)
    if not return_plan:
        return labels
    return labels, plan.mul_(c[:, None])
