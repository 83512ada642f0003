"""InstDisc: instance discrimination with a memory bank (Wu, Xiong, Yu, Lin 2018, "Unsupervised
Feature Learning via Non-Parametric Instance Discrimination", arXiv 1805.01978).

Every image is its own class. The network maps an augmented image to a 128-d unit vector f_i; a
memory bank V holds one unit vector per image and stands in for the classifier weights, so the
probability of instance i is exp(v_i.f / tau) / Z (Eq. 2-3, non-parametric softmax). NCE
approximates it with m noise rows drawn uniformly from the bank (Eq. 4-6), each scored against the
threshold log(Z m P_n). The proximal term lambda ||f_i - v_i||^2 (Eq. 10, v_i being the bank row
before this step's update) damps the oscillation of rows that are visited once per epoch. After
each step the bank rows of the batch become normalize(0.5 v_i + 0.5 f_i).

Paper defaults: 128-d, tau 0.07, bank momentum 0.5, m = 4096 noise samples, SGD lr 0.03 x B/256,
weight decay 5e-4, 200 epochs. ``loss="softmax"`` uses the full non-parametric softmax over the bank
instead of NCE (the paper does so on CIFAR-10, where n = 50000 rows are affordable).
``proximal_lambda`` defaults to the paper's 30; the authors' released code has no proximal term, so
set 0 to match it. m stays 4096 at CIFAR scale, where the bank holds 50000 rows; with fewer images
(the digits tests), pass a smaller ``noise_samples``. One augmented view per image
(``views.options.num_views: 1``); a second view, if given, is ignored. Where the bank has at most
64 x m rows (``nce_scores_dense``), the noise scores come out of one product with the whole bank (the
same loss, 6.4x faster than gathering B x m rows at n = 50,000; benchmarks/nce_scores.py).

Z, three ways (``z``). ``"once"`` is the paper's: estimated by Monte Carlo on the first iteration
(Eq. 8) and kept, as a buffer so that a resumed run keeps it too. ``"tracked"`` (not in the paper)
moves it towards each step's estimate, Z <- m Z + (1 - m) Z_t with ``z_momentum`` m.
``"per_sample"`` (not in the paper) uses each row's own Z_i = (n/m) sum_k exp(v_jk.f_i / tau) from
its m noise draws, detached: Eq. 8 before the paper replaces every Z_i by one constant. Why the
constant fails at our budgets: a Z below the rows' own Z_i weighs the noise term over the positive
by their ratio (``z_ratio``, logged: today's estimate over the Z in use). The paper's Z is taken
against the random bank; once the bank holds the network's features, whose cosines are high early
in training, it is hundreds to thousands of times too small. SGD then lowers the noise term most
cheaply by carrying every feature away from where the bank last saw it: the embedding chases its
own stale bank instead of spreading. Measured on 10,000 CIFAR-10 images, 4 epochs, width 0.25
(same seed; kNN k = 200, random init 26.41), next to the softmax:
- ``once``: z_ratio 848 after epoch 1, 14,835 after epoch 4; the proximal term stays near 60, so
  ||f_i - v_i||^2 ~ 2 (an image's feature orthogonal to its own bank row an epoch later, where
  the softmax's falls to 0.07 by epoch 4); kNN 20.80;
- ``tracked`` (0.99): Z lags as the bank concentrates (z_ratio still 3-5 in epochs 3-4); 26.62;
- ``per_sample``: no lag; its NCE loss follows the softmax's loss within 1.2% every epoch (9.41
  against 9.30 after epoch 4): with Z_i the noise weights of a row sum to about 1 against the
  positive's 1, as in the softmax's gradient; kNN 28.48 against the softmax's 29.95 (tau 0.1:
  29.56; no proximal term: 28.03).
On the full train split at the 30-minute budget (width 0.25, random init 29.24 kNN), on a 2-core
EPYC with bf16, ``once`` ended at 21.83 and ``tracked`` at 31.05; on a 2-core EPYC with AVX2 only
(fp32), two rows side by side, ``per_sample`` reached 34.94 kNN (+5.70) / 39.99 linear (+5.50) in
6.4 epochs, level with the softmax's 34.70 / 39.49 in 6.0 epochs beside it. On the digits (16 px,
width 1/8, m = 512, batch 64, 20 epochs, k = 20, random init 68.5; AVX2, fp32) ``once`` ends at
48.5, ``tracked`` 64.6, ``per_sample`` 77.7 and the softmax 79.7. The recipe's ``loss: nce``
therefore uses ``per_sample``; ``z: once`` runs the paper's. The authors' release (lemniscate) fixes
Z once, as the paper does, and trains 200 epochs of full-width networks, which we have not run; its
CIFAR script defaults to the softmax (``--nce-k 0``), with tau 0.1, no proximal term and lr 0.03 at
batch 128. On the digits, with the older tracked Z, the proximal term helped (78.8 with it, 49.9
without), so the recipe keeps it.

``bank_init="features"`` (not in the paper, whose bank starts as random unit vectors) fills the
bank with the untrained network's embeddings of the unaugmented images before the first step, so
that a first-step Z is taken against real features (Z/n 2275 against 1.66 on the digits); on
10,000 CIFAR-10 images with ``z: once`` it still ended below random init after 4 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError
from selfsup.losses import (
    estimate_nce_normalizer,
    instdisc_nce_loss,
    nce_scores_dense,
    nonparametric_softmax_loss,
    proximal_term,
)
from selfsup.methods.base import Context, Method
from selfsup.negatives import MemoryBank

Z_ESTIMATES = ("once", "tracked", "per_sample")


class InstDisc(Method):
    def __init__(self, backbone: nn.Module, embedding_dim: int = 128, temperature: float = 0.07,
                 loss: str = "nce", noise_samples: int = 4096, bank_momentum: float = 0.5,
                 proximal_lambda: float = 30.0, bank_init: str = "random", z: str = "once",
                 z_momentum: float = 0.99, dataset_size: int = 0):
        super().__init__(backbone)
        if loss not in ("nce", "softmax"):
            raise SelfSupError(f"InstDisc loss must be 'nce' or 'softmax', got {loss!r}")
        if dataset_size < 1:
            raise SelfSupError("InstDisc keeps one memory-bank row per image and needs dataset_size (the trainer "
                               "fills it in; pass dataset_size=len(dataset) when building the method by hand)")
        if loss == "nce" and not 1 <= noise_samples:
            raise SelfSupError(f"noise_samples must be >= 1, got {noise_samples}")
        if z not in Z_ESTIMATES:
            raise SelfSupError(f"z must be one of {', '.join(Z_ESTIMATES)} ('once': the paper), got {z!r}")
        if not 0 <= z_momentum < 1:
            raise SelfSupError(f"z_momentum must be in [0, 1) (it is used by z='tracked'), got {z_momentum}")
        if bank_init not in ("random", "features"):
            raise SelfSupError(f"bank_init must be 'random' (the paper) or 'features', got {bank_init!r}")
        self.embedding = nn.Linear(backbone.out_dim, embedding_dim)
        self.bank = MemoryBank(dataset_size, embedding_dim, bank_momentum)
        self.register_buffer("normalization_constant", torch.zeros(()))  # Z; 0 until the first step estimates it
        # Whether the bank still waits for bank_init="features"; a buffer, so a resumed run does not refill it.
        self.register_buffer("bank_pending", torch.tensor(bank_init == "features"))
        self.temperature, self.loss, self.noise_samples = temperature, loss, noise_samples
        self.proximal_lambda, self.z, self.z_momentum = proximal_lambda, z, z_momentum

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.embedding(self.backbone(x)), dim=1)

    def hook_runs(self, epochs: int, total_steps: int, steps_per_epoch: int) -> int:
        return int(bool(self.bank_pending))  # bank_init="features" fills the bank once

    @torch.no_grad()
    def on_epoch_start(self, ctx: Context) -> None:
        if not bool(self.bank_pending):
            return
        if ctx.eval_batches is None:
            raise SelfSupError("bank_init='features' needs the unaugmented training set (an in-memory data set); "
                               "use bank_init='random' with this data")
        was_training = self.training
        self.eval()
        for x, _, index in ctx.eval_batches():
            self.bank.bank[index] = self.embed(x).to(self.bank.bank.dtype)
        self.train(was_training)
        self.bank_pending.fill_(False)

    @torch.no_grad()
    def estimate_z(self, features: Tensor, memory: Tensor, noise: Tensor) -> Tensor:
        """Monte-Carlo estimate of Z (eq. 8) from the noise draws ``noise`` (B, m) of each row."""
        scores = torch.einsum("bmd,bd->bm", memory[noise], features) / self.temperature
        return estimate_nce_normalizer(scores, memory.shape[0])

    def z_ratio(self, features: Tensor, memory: Tensor, noise: Tensor, columns: int = 64) -> Tensor:
        """Today's estimate of Z (from the first ``columns`` noise draws of each row) over the Z
        in use. Logged as ``z_ratio``. On the digits a run that learned (feature-initialized bank)
        read 11 falling to 7; the runs that failed read hundreds and growing (509, 3226, 32547 after
        epochs 1-3): the noise term is then scored as far too probable and dominates."""
        return self.estimate_z(features, memory, noise[:, :columns]) / self.normalization_constant

    @torch.no_grad()
    def track_z(self, ratio: Tensor) -> None:
        """Move Z towards today's estimate (``ratio`` = estimate / Z, the ranks' mean, so that every
        rank keeps the same Z): Z <- m Z + (1 - m) estimate, m = ``z_momentum``."""
        self.normalization_constant.mul_(self.z_momentum + (1 - self.z_momentum) * ratio)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        f = self.embed(views[0]).float()
        memory = self.bank.bank
        out: dict[str, Tensor] = {}
        if self.loss == "softmax":
            # A snapshot: the bank is written below, and the product's backward still needs these rows.
            main = nonparametric_softmax_loss(f, self.bank.negatives(), index, self.temperature)
        else:
            noise = dist.shard(self.bank.sample((f.shape[0] * dist.world_size(), self.noise_samples)))
            z = None  # z="per_sample": each row's Z_i from its own noise draws, inside the loss
            if self.z != "per_sample":
                if float(self.normalization_constant) <= 0:
                    self.normalization_constant.copy_(dist.all_reduce_mean(self.estimate_z(f.detach(), memory, noise)))
                ratio = self.z_ratio(f.detach(), memory, noise)
                out["z_ratio"] = ratio  # before tracking: how far off the Z of the last step was
                if self.training and self.z == "tracked":  # the paper's fixed Z needs no collective here
                    self.track_z(dist.all_reduce_mean(ratio))
                z = self.normalization_constant
                out["normalization_constant"] = z.clone()
            # Scored against the whole bank where that is cheaper (the loss's rule), from a snapshot,
            # since the product's backward needs the rows that the bank update below writes.
            dense = nce_scores_dense(memory.shape[0], self.noise_samples)
            main = instdisc_nce_loss(f, self.bank.negatives() if dense else memory, index, noise, self.temperature,
                                     normalization_constant=z, dense=dense)
        out[self.loss] = main.detach()
        loss = main
        if self.proximal_lambda > 0:
            proximal = proximal_term(f, memory[index], self.proximal_lambda)
            out["proximal"] = proximal.detach()
            loss = loss + proximal
        self.bank.update(f.detach(), index)
        out["loss"] = loss
        return out
