"""Loss family beyond SimCLR: InfoNCE/CLIP, BYOL, ReLIC, InstDisc, DIM/AMDIM, SwAV, PCL.

Every loss is checked against a reference written with explicit Python loops over samples and
candidates and plain ``math`` (no torch reductions), on small random float64 inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.losses.byol import byol_loss
from selfsup.losses.dim import amdim_loss, dim_local_loss
from selfsup.losses.infonce import clip_loss, info_nce, info_nce_in_batch
from selfsup.losses.instdisc import (
    estimate_nce_normalizer,
    instdisc_nce_loss,
    nonparametric_softmax_loss,
    proximal_term,
)
from selfsup.losses.protonce import _sample_negative_prototypes, pcl_concentration, proto_nce_loss
from selfsup.losses.relic import relic_loss, relic_loss_terms
from selfsup.losses.swav import swav_loss

ATOL = 1e-5


def _randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _unit_rows(x: torch.Tensor) -> list[list[float]]:
    out = []
    for row in x.tolist():
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / norm for v in row])
    return out


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _lse(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


# ---------------------------------------------------------------- InfoNCE / MoCo / CLIP


def _ref_info_nce(query, key, negatives, t):
    q, k, n = _unit_rows(query), _unit_rows(key), _unit_rows(negatives)
    total = 0.0
    for i in range(len(q)):
        logits = [_dot(q[i], k[i]) / t] + [_dot(q[i], neg) / t for neg in n]
        total += _lse(logits) - logits[0]
    return total / len(q)


def _ref_in_batch(query, key, t):
    q, k = _unit_rows(query), _unit_rows(key)
    total = 0.0
    for i in range(len(q)):
        logits = [_dot(q[i], k[j]) / t for j in range(len(k))]
        total += _lse(logits) - logits[i]
    return total / len(q)


def test_info_nce_matches_loop_reference():
    q, k, n = _randn(5, 4, seed=0), _randn(5, 4, seed=1), _randn(7, 4, seed=2)
    got = info_nce(q, k, n, temperature=0.3)
    assert got.item() == pytest.approx(_ref_info_nce(q, k, n, 0.3), abs=ATOL)


def test_info_nce_positive_is_column_zero_and_nothing_is_detached():
    q, n = _randn(6, 5, seed=3), _randn(9, 5, seed=4)
    aligned = info_nce(q, q.clone(), n, temperature=0.1)
    opposed = info_nce(q, -q, n, temperature=0.1)
    assert aligned < opposed
    # Putting the key's logit in column 0 and targeting 0 is the whole definition.
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(q, dim=1), F.normalize(n, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.T], dim=1) / 0.1
    assert aligned.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(6, dtype=torch.long)).item())

    key = _randn(6, 5, seed=5).requires_grad_()
    negatives = n.clone().requires_grad_()
    info_nce(q, key, negatives).backward()
    assert key.grad is not None and key.grad.abs().sum() > 0
    assert negatives.grad is not None and negatives.grad.abs().sum() > 0


def test_info_nce_in_batch_matches_reference_and_scales():
    q, k = _randn(6, 3, seed=6), _randn(6, 3, seed=7)
    plain = info_nce_in_batch(q, k, temperature=0.2)
    assert plain.item() == pytest.approx(_ref_in_batch(q, k, 0.2), abs=ATOL)
    scaled = info_nce_in_batch(q, k, temperature=0.2, scale_by_temperature=True)
    assert scaled.item() == pytest.approx(2 * 0.2 * plain.item(), abs=ATOL)


def test_clip_loss_matches_reference_and_is_symmetric():
    a, b = _randn(5, 4, seed=8), _randn(5, 4, seed=9)
    ua, ub = _unit_rows(a), _unit_rows(b)
    t = 0.07
    a_to_b = sum(
        _lse([_dot(ua[i], ub[j]) / t for j in range(5)]) - _dot(ua[i], ub[i]) / t for i in range(5)
    ) / 5
    b_to_a = sum(
        _lse([_dot(ua[i], ub[j]) / t for i in range(5)]) - _dot(ua[j], ub[j]) / t for j in range(5)
    ) / 5
    assert clip_loss(a, b, t).item() == pytest.approx(0.5 * (a_to_b + b_to_a), abs=ATOL)
    assert clip_loss(a, b, t).item() == pytest.approx(clip_loss(b, a, t).item(), abs=1e-12)


def test_clip_loss_learnable_temperature_gradcheck():
    a = _randn(4, 3, seed=10).requires_grad_()
    b = _randn(4, 3, seed=11).requires_grad_()
    log_scale = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, s: clip_loss(x, y, torch.exp(-s)), (a, b, log_scale))


# ---------------------------------------------------------------- BYOL


def test_byol_matches_reference_blocks_target_gradient_and_vanishes_on_scaled_copies():
    p, z = _randn(6, 4, seed=12), _randn(6, 4, seed=13)
    up, uz = _unit_rows(p), _unit_rows(z)
    ref = sum(2 - 2 * _dot(up[i], uz[i]) for i in range(6)) / 6
    assert byol_loss(p, z).item() == pytest.approx(ref, abs=ATOL)

    p_leaf, z_leaf = p.clone().requires_grad_(), z.clone().requires_grad_()
    grad_p, grad_z = torch.autograd.grad(byol_loss(p_leaf, z_leaf), (p_leaf, z_leaf), allow_unused=True)
    assert grad_z is None
    assert grad_p.abs().sum() > 0

    assert byol_loss(3.7 * z, z).item() == pytest.approx(0.0, abs=1e-12)
    assert torch.autograd.gradcheck(lambda x: byol_loss(x, z), (p.clone().requires_grad_(),))


# ---------------------------------------------------------------- ReLIC


def _ref_relic_torch(anchor, positive, t, alpha, beta, stop_gradient=True):
    """Scalar-op loops (kept in torch so its gradient can be compared too)."""
    n = anchor.shape[0]
    a = [anchor[i] / anchor[i].norm() for i in range(n)]
    z = [positive[i] / positive[i].norm() for i in range(n)]
    s = [[(a[i] * z[j]).sum() / t for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row_lse = torch.logsumexp(torch.stack(s[i]), dim=0)
        col_lse = torch.logsumexp(torch.stack([s[m][i] for m in range(n)]), dim=0)
        kl = 0.0
        for j in range(n):
            log_pa = s[i][j] - row_lse
            log_pz = s[j][i] - col_lse
            if stop_gradient:
                log_pz = log_pz.detach()
            kl = kl + torch.exp(log_pa) * (log_pa - log_pz)
        nll = -(s[i][i] - row_lse)
        total = total + alpha * nll + beta * kl
    return total / n


def test_relic_matches_loop_reference_in_value_and_gradient():
    anchor = _randn(5, 4, seed=14).requires_grad_()
    positive = _randn(5, 4, seed=15).requires_grad_()
    got = relic_loss(anchor, positive, temperature=0.3, alpha=0.7, beta=1.3)
    ref = _ref_relic_torch(anchor, positive, 0.3, 0.7, 1.3)
    assert got.item() == pytest.approx(ref.item(), abs=ATOL)
    g_got = torch.autograd.grad(got, (anchor, positive))
    g_ref = torch.autograd.grad(ref, (anchor, positive))
    for x, y in zip(g_got, g_ref):
        assert torch.allclose(x, y, atol=ATOL)
    # The stop-gradient matters: without it the gradient would be different.
    g_no_sg = torch.autograd.grad(_ref_relic_torch(anchor, positive, 0.3, 0.7, 1.3, False), (anchor,))
    assert not torch.allclose(g_got[0], g_no_sg[0], atol=1e-6)


def test_relic_terms_beta_zero_and_kl_properties():
    anchor, positive = _randn(6, 3, seed=16), _randn(6, 3, seed=17)
    terms = relic_loss_terms(anchor, positive, temperature=0.1, alpha=0.5, beta=2.0)
    assert terms.loss.item() == pytest.approx(0.5 * terms.contrastive.item() + 2.0 * terms.kl.item())

    plain = relic_loss(anchor, positive, temperature=0.1, beta=0.0)
    assert plain.item() == pytest.approx(_ref_in_batch(anchor, positive, 0.1), abs=ATOL)
    assert plain.item() == pytest.approx(info_nce_in_batch(anchor, positive, 0.1).item(), abs=1e-10)

    assert relic_loss_terms(anchor, anchor.clone()).kl.item() == pytest.approx(0.0, abs=1e-12)
    for seed in range(3):
        kl = relic_loss_terms(_randn(4, 3, seed=100 + seed), _randn(4, 3, seed=200 + seed)).kl
        assert kl.item() > 1e-6


# ---------------------------------------------------------------- InstDisc


def _bank(n, d, seed):
    return F.normalize(_randn(n, d, seed=seed), dim=1)


def test_nonparametric_softmax_matches_reference():
    feats, memory = _randn(4, 3, seed=18), _bank(9, 3, seed=19)
    index = torch.tensor([0, 4, 4, 8])
    f, mem = _unit_rows(feats), memory.tolist()
    ref = 0.0
    for b in range(4):
        logits = [_dot(f[b], mem[j]) / 0.07 for j in range(9)]
        ref += _lse(logits) - logits[int(index[b])]
    got = nonparametric_softmax_loss(feats, memory, index, temperature=0.07)
    assert got.item() == pytest.approx(ref / 4, abs=ATOL)


@pytest.mark.parametrize("dense", [True, False, None])
def test_instdisc_nce_matches_eq_5_6_and_gradcheck(dense):
    feats, memory = _randn(3, 4, seed=20), _bank(11, 4, seed=21)
    index = torch.tensor([1, 5, 10])
    noise = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(22))
    t, z, n_data, m = 0.5, 7.3, 11, 6
    f, mem = _unit_rows(feats), memory.tolist()
    ref = 0.0
    for b in range(3):
        p_pos = math.exp(_dot(mem[int(index[b])], f[b]) / t) / z
        ref -= math.log(p_pos / (p_pos + m / n_data))
        for k in range(m):
            p_neg = math.exp(_dot(mem[int(noise[b, k])], f[b]) / t) / z
            ref -= math.log(1 - p_neg / (p_neg + m / n_data))
    got = instdisc_nce_loss(feats, memory, index, noise, t, normalization_constant=z, dense=dense)
    assert got.item() == pytest.approx(ref / 3, abs=ATOL)
    # Z given as a tensor gives the same value.
    z_tensor = torch.tensor(z, dtype=torch.float64)
    got_t = instdisc_nce_loss(feats, memory, index, noise, t, normalization_constant=z_tensor, dense=dense)
    assert got_t.item() == pytest.approx(got.item(), abs=1e-10)
    assert torch.autograd.gradcheck(
        lambda x: instdisc_nce_loss(x, memory, index, noise, t, normalization_constant=z, dense=dense),
        (feats.clone().requires_grad_(),),
    )


@pytest.mark.parametrize("dense", [True, False])
def test_instdisc_nce_per_sample_z_matches_reference(dense):
    """normalization_constant=None: each row's Z_i = n/m sum_k exp(s_k) from its own noise draws
    (eq. 8's Z_i), held fixed in the gradient (detached), as a loop computes it."""
    feats, memory = _randn(3, 4, seed=24), _bank(11, 4, seed=25)
    index = torch.tensor([2, 2, 9])
    noise = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(26))
    t, n_data, m = 0.3, 11, 6

    def reference(x):
        f = F.normalize(x, dim=1)
        total = x.new_zeros(())
        for b in range(3):
            s_noise = [f[b] @ memory[int(j)] / t for j in noise[b]]
            z_b = n_data / m * sum(math.exp(v.detach().item()) for v in s_noise)  # a number: no gradient
            p_pos = torch.exp(f[b] @ memory[int(index[b])] / t) / z_b
            total = total - torch.log(p_pos / (p_pos + m / n_data))
            for v in s_noise:
                p_neg = torch.exp(v) / z_b
                total = total - torch.log(1 - p_neg / (p_neg + m / n_data))
        return total / 3

    x_ref = feats.clone().requires_grad_()
    ref = reference(x_ref)
    ref.backward()
    x = feats.clone().requires_grad_()
    got = instdisc_nce_loss(x, memory, index, noise, t, normalization_constant=None, dense=dense)
    got.backward()
    assert got.item() == pytest.approx(ref.item(), abs=ATOL)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-10, rtol=1e-8)


def test_nce_normalizer_and_proximal_term_match_reference():
    logits = _randn(3, 5, seed=23)
    ref = sum(100 / 5 * sum(math.exp(v) for v in row) for row in logits.tolist()) / 3
    z = estimate_nce_normalizer(logits.clone().requires_grad_(), 100)
    assert z.item() == pytest.approx(ref, rel=1e-10)
    assert not z.requires_grad

    feats, rows = _randn(4, 3, seed=24), _bank(4, 3, seed=25)
    f, r = _unit_rows(feats), rows.tolist()
    ref = 30.0 * sum(sum((f[b][d] - r[b][d]) ** 2 for d in range(3)) for b in range(4)) / 4
    assert proximal_term(feats, rows, 30.0).item() == pytest.approx(ref, abs=ATOL)


# ---------------------------------------------------------------- Deep InfoMax / AMDIM


def _scores_from_map(global_feats, local_map):
    """T[i][j][m] with locations m = h * W + w read straight from the (B, D, H, W) map."""
    g = global_feats.tolist()
    bsz, dim, height, width = local_map.shape
    lm = local_map.tolist()
    return [
        [
            [sum(g[i][d] * lm[j][d][h][w] for d in range(dim)) for h in range(height) for w in range(width)]
            for j in range(bsz)
        ]
        for i in range(bsz)
    ]


def test_dim_local_jsd_matches_reference_for_both_layouts():
    g, local = _randn(4, 3, seed=26), _randn(4, 3, 2, 3, seed=27)
    s = _scores_from_map(g, local)
    pos = [s[i][i][m] for i in range(4) for m in range(6)]
    neg = [s[i][j][m] for i in range(4) for j in range(4) if j != i for m in range(6)]
    e_pos = sum(-_softplus(-v) for v in pos) / len(pos)
    e_neg = sum(_softplus(v) for v in neg) / len(neg)
    got = dim_local_loss(local, g, estimator="jsd")
    assert got.item() == pytest.approx(e_neg - e_pos, abs=ATOL)
    as_sets = local.permute(0, 2, 3, 1).reshape(4, 6, 3)
    assert dim_local_loss(as_sets, g, "jsd").item() == pytest.approx(got.item(), abs=1e-12)


def test_dim_local_infonce_matches_reference_and_gradcheck():
    g, local = _randn(3, 2, seed=28), _randn(3, 2, 2, 2, seed=29)
    s = _scores_from_map(g, local)
    ref = 0.0
    for i in range(3):
        for m in range(4):
            logits = [s[i][j][m] for j in range(3)]
            ref += _lse(logits) - logits[i]
    got = dim_local_loss(local, g, estimator="infonce")
    assert got.item() == pytest.approx(ref / 12, abs=ATOL)
    inputs = (local.clone().requires_grad_(), g.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: dim_local_loss(a, b, "infonce"), inputs)


def test_amdim_matches_reference_with_tanh_clip_and_penalty():
    g, local = 3.0 * _randn(3, 4, seed=30), 3.0 * _randn(3, 4, 2, 2, seed=31)
    raw = [[[v / 2.0 for v in row] for row in rows] for rows in _scores_from_map(g, local)]  # sqrt(D) = 2
    c, lam = 1.5, 0.04
    clipped = [[[c * math.tanh(v / c) for v in row] for row in rows] for rows in raw]
    nce = 0.0
    for i in range(3):
        negs = [clipped[i][j][m2] for j in range(3) if j != i for m2 in range(4)]
        for m in range(4):
            logits = [clipped[i][i][m]] + negs
            nce += _lse(logits) - logits[0]
    penalty = lam * sum(v * v for rows in raw for row in rows for v in row) / 36
    got = amdim_loss(g, local, clip=c, score_penalty=lam)
    assert got.item() == pytest.approx(nce / 12 + penalty, abs=ATOL)

    huge = amdim_loss(1e3 * g, local, clip=20.0, score_penalty=0.0)
    assert torch.isfinite(huge) and huge.item() <= 2 * 20.0 + math.log(12) + 1e-9
    assert torch.autograd.gradcheck(
        lambda a, b: amdim_loss(a, b, clip=c), (g.clone().requires_grad_(), local.clone().requires_grad_())
    )


# ---------------------------------------------------------------- SwAV


def test_swav_matches_released_loop_averaging():
    scores = [_randn(4, 5, seed=40 + v) for v in range(4)]
    codes = [torch.softmax(_randn(4, 5, seed=50 + s), dim=1) for s in range(2)]
    t = 0.1
    ref = 0.0
    for s in (0, 1):
        q = codes[s].tolist()
        sub = 0.0
        for v in range(4):
            if v == s:
                continue
            x = scores[v].tolist()
            ce = 0.0
            for b in range(4):
                lse = _lse([x[b][k] / t for k in range(5)])
                ce -= sum(q[b][k] * (x[b][k] / t - lse) for k in range(5))
            sub += ce / 4
        ref += sub / 3
    ref /= 2
    got = swav_loss(scores, codes, temperature=t, assignment_views=(0, 1))
    assert got.item() == pytest.approx(ref, abs=ATOL)
    as_dict = swav_loss(scores, {1: codes[1], 0: codes[0]}, temperature=t)
    assert as_dict.item() == pytest.approx(got.item(), abs=1e-12)


def test_swav_one_hot_codes_give_cross_entropy_and_codes_get_no_gradient():
    s0 = _randn(6, 4, seed=60).requires_grad_()
    s1 = _randn(6, 4, seed=61).requires_grad_()
    y0, y1 = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 2, 1, 0, 0])
    q0 = F.one_hot(y0, 4).double().requires_grad_()
    q1 = F.one_hot(y1, 4).double()
    got = swav_loss([s0, s1], [q0, q1], temperature=0.5)
    expected = 0.5 * (F.cross_entropy(s1 / 0.5, y0) + F.cross_entropy(s0 / 0.5, y1))
    assert got.item() == pytest.approx(expected.item(), abs=1e-10)
    got.backward()
    assert q0.grad is None
    assert s0.grad.abs().sum() > 0 and s1.grad.abs().sum() > 0


# ---------------------------------------------------------------- PCL


def _ref_proto(query, protos, assigns, concs, negatives_per_query):
    """negatives_per_query[m][i]: prototype indices contrasted with query i in clustering m."""
    q = _unit_rows(query)
    total = 0.0
    for m in range(len(protos)):
        c, phi = _unit_rows(protos[m]), concs[m].tolist()
        loss_m = 0.0
        for i in range(len(q)):
            s = int(assigns[m][i])
            logits = [_dot(q[i], c[s]) / phi[s]]
            logits += [_dot(q[i], c[j]) / phi[j] for j in negatives_per_query[m][i]]
            loss_m += _lse(logits) - logits[0]
        total += loss_m / len(q)
    return total / len(protos)


def _pcl_inputs():
    query = _randn(4, 3, seed=70)
    protos = [_randn(6, 3, seed=71), _randn(5, 3, seed=72)]
    assigns = [torch.tensor([0, 2, 2, 5]), torch.tensor([1, 1, 3, 4])]
    concs = [0.1 + torch.rand(6, generator=torch.Generator().manual_seed(73), dtype=torch.float64),
             0.1 + torch.rand(5, generator=torch.Generator().manual_seed(74), dtype=torch.float64)]
    return query, protos, assigns, concs


def test_proto_nce_matches_reference_in_all_three_sampling_modes():
    query, protos, assigns, concs = _pcl_inputs()
    others = [
        [[j for j in range(p.shape[0]) if j != int(a[i])] for i in range(4)] for p, a in zip(protos, assigns)
    ]
    ref_all = _ref_proto(query, protos, assigns, concs, others)
    assert proto_nce_loss(query, protos, assigns, concs, None).item() == pytest.approx(ref_all, abs=ATOL)

    # Per-query draw with r = K - 1 (clustering 1 has K = 5) must cover every other prototype.
    gen = torch.Generator().manual_seed(0)
    got = proto_nce_loss(query, protos[1:], assigns[1:], concs[1:], 4, gen, shared_negatives=False)
    ref = _ref_proto(query, protos[1:], assigns[1:], concs[1:], others[1:])
    assert got.item() == pytest.approx(ref, abs=ATOL)

    # Shared draw: clustering 0 has positives {0, 2, 5}, so exactly {1, 3, 4} remain for r = 3.
    shared = [[[1, 3, 4]] * 4]
    got = proto_nce_loss(query, protos[:1], assigns[:1], concs[:1], 3, torch.Generator().manual_seed(1))
    ref = _ref_proto(query, protos[:1], assigns[:1], concs[:1], shared)
    assert got.item() == pytest.approx(ref, abs=ATOL)


def test_negative_prototype_sampler_excludes_positives_and_is_reproducible():
    positives = torch.tensor([0, 3, 3, 7, 9])
    shared = _sample_negative_prototypes(positives, 20, 8, True, torch.Generator().manual_seed(5))
    again = _sample_negative_prototypes(positives, 20, 8, True, torch.Generator().manual_seed(5))
    assert torch.equal(shared, again)
    assert len(set(shared.tolist())) == 8 and not set(shared.tolist()) & set(positives.tolist())
    per_query = _sample_negative_prototypes(positives, 10, 6, False, torch.Generator().manual_seed(6))
    assert per_query.shape == (5, 6)
    for row, pos in zip(per_query.tolist(), positives.tolist()):
        assert len(set(row)) == 6 and pos not in row and all(0 <= j < 10 for j in row)


def test_pcl_concentration_hand_example():
    # Cluster 0, centroid (0, 0): members (1, 0), (0, 3) -> distances 1, 3, Z = 2:
    #   phi0 = (1 + 3) / (2 * ln(2 + 10)) = 2 / ln 12 = 0.8048592087636893
    # Cluster 1, centroid (5, 5): members (5, 6), (4, 5), (5, 4) -> distances 1, 1, 1, Z = 3:
    #   phi1 = 3 / (3 * ln 13) = 0.3898712452512801
    # Cluster 2, centroid (-5, 0): one member -> takes the max of the others, phi2 = phi0.
    # Percentiles of [phi0, phi1, phi0] (sorted phi1, phi0, phi0; linear interpolation):
    #   10th at rank 0.2 -> phi1 + 0.2 (phi0 - phi1) = 0.47286883795376194; 90th at rank 1.8 -> phi0.
    #   So phi1 is raised to 0.47286883795376194 and the others stay.
    # Mean = (2 * 0.8048592087636893 + 0.47286883795376194) / 3 = 0.6941957518270468;
    # rescaled to mean 0.2: phi0 = phi2 = 0.23188249327236257, phi1 = 0.1362350134552749.
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 6.0], [4.0, 5.0], [5.0, 4.0], [-5.0, 2.0]],
                            dtype=torch.float64)
    assignments = torch.tensor([0, 0, 1, 1, 1, 2])
    centroids = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 0.0]], dtype=torch.float64)
    phi = pcl_concentration(features, assignments, centroids)
    expected = torch.tensor(
        [0.23188249327236257, 0.1362350134552749, 0.23188249327236257], dtype=torch.float64
    )
    assert torch.allclose(phi, expected, atol=1e-12)
    assert phi.mean().item() == pytest.approx(0.2)
    raw = pcl_concentration(features, assignments, centroids, clamp_percentiles=None, temperature=None)
    raw_expected = [0.8048592087636893, 0.3898712452512801, 0.8048592087636893]
    assert torch.allclose(raw, torch.tensor(raw_expected, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------- bad inputs


def _m(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64) + 0.5


_GOOD_CODES = [torch.full((4, 5), 0.2, dtype=torch.float64)] * 2


@pytest.mark.parametrize(
    "call",
    [
        lambda: info_nce(_m(4, 3), _m(4, 2), _m(6, 3)),
        lambda: info_nce(_m(4, 3), _m(4, 3), _m(6, 2)),
        lambda: info_nce(_m(4, 3), _m(4, 3), _m(6, 3), temperature=0.0),
        lambda: info_nce_in_batch(_m(4), _m(4)),
        lambda: clip_loss(_m(4, 3), _m(5, 3)),
        lambda: clip_loss(_m(4, 3), _m(4, 3), temperature=torch.ones(2)),
        lambda: byol_loss(_m(4, 3), _m(3, 3)),
        lambda: relic_loss(_m(4, 3), _m(4, 2)),
        lambda: relic_loss(_m(4, 3), _m(4, 3), beta=-1.0),
        lambda: nonparametric_softmax_loss(_m(4, 3), _m(9, 3), torch.tensor([0, 1, 2])),
        lambda: nonparametric_softmax_loss(_m(4, 3), _m(9, 3), torch.tensor([0, 1, 2, 9])),
        lambda: instdisc_nce_loss(_m(2, 3), _m(9, 3), torch.tensor([0, 1]), torch.tensor([1, 2]),
                                  normalization_constant=1.0),
        lambda: proximal_term(_m(4, 3), _m(4, 2), 1.0),
        lambda: estimate_nce_normalizer(_m(2, 3), 0),
        lambda: dim_local_loss(_m(4, 3), _m(4, 3)),
        lambda: dim_local_loss(_m(4, 3, 2, 2), _m(3, 3)),
        lambda: dim_local_loss(_m(4, 3, 2, 2), _m(4, 2)),
        lambda: dim_local_loss(_m(4, 3, 2, 2), _m(4, 3), estimator="nwj"),
        lambda: amdim_loss(_m(1, 3), _m(1, 3, 2, 2)),
        lambda: swav_loss([_m(4, 5)], _GOOD_CODES[:1]),
        lambda: swav_loss([_m(4, 5)] * 3, _GOOD_CODES[:1]),
        lambda: swav_loss([_m(4, 5)] * 3, [_m(4, 5)] * 2),
        lambda: swav_loss([_m(4, 5)] * 3, _GOOD_CODES, assignment_views=(0, 3)),
        lambda: proto_nce_loss(_m(4, 3), [_m(6, 3)], [], [_m(6)], None),
        lambda: proto_nce_loss(_m(4, 3), [_m(6, 3)], [torch.tensor([0, 1, 2, 3])], [_m(5)], None),
        lambda: proto_nce_loss(_m(4, 3), [_m(6, 3)], [torch.tensor([0, 1, 2, 3])], [_m(6)], 3),
        lambda: pcl_concentration(_m(3, 2), torch.tensor([0, 1, 2]), _m(3, 2)),
    ],
)
def test_bad_inputs_raise_selfsup_error(call):
    with pytest.raises(SelfSupError):
        call()
