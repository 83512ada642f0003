"""Loss functions: pure functions of tensors, each citing the equation it implements."""

from selfsup.losses.byol import byol_loss
from selfsup.losses.colorization import colorization_loss
from selfsup.losses.contrastive import contrastive_loss, nt_xent
from selfsup.losses.counting import CountingTerms, counting_loss, counting_loss_terms
from selfsup.losses.dim import amdim_loss, dim_local_loss
from selfsup.losses.infonce import clip_loss, info_nce, info_nce_in_batch
from selfsup.losses.inpainting import inpainting_loss, inpainting_weights
from selfsup.losses.instdisc import (
    estimate_nce_normalizer,
    instdisc_nce_loss,
    nce_scores_dense,
    nonparametric_softmax_loss,
    proximal_term,
)
from selfsup.losses.invaspread import invaspread_loss
from selfsup.losses.protonce import pcl_concentration, proto_nce_loss
from selfsup.losses.relic import ReLICTerms, relic_loss, relic_loss_terms
from selfsup.losses.swav import swav_loss
from selfsup.losses.triplet import triplet_loss

__all__ = [
    "CountingTerms", "ReLICTerms", "amdim_loss", "byol_loss", "clip_loss", "colorization_loss", "contrastive_loss",
    "counting_loss", "counting_loss_terms", "dim_local_loss", "estimate_nce_normalizer", "info_nce",
    "info_nce_in_batch", "inpainting_loss", "inpainting_weights", "instdisc_nce_loss", "invaspread_loss",
    "nce_scores_dense", "nonparametric_softmax_loss", "nt_xent", "pcl_concentration", "proto_nce_loss", "proximal_term",
    "relic_loss", "relic_loss_terms", "swav_loss", "triplet_loss",
]
