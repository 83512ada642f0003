"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.amdim import AMDIM
from selfsup.methods.base import Context, Method
from selfsup.methods.byol import BYOL
from selfsup.methods.clip import CLIP
from selfsup.methods.dim import DeepInfoMax
from selfsup.methods.instdisc import InstDisc
from selfsup.methods.invaspread import InvaSpread
from selfsup.methods.moco import MoCoV1, MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "moco_v1": MoCoV1,
    "moco_v2": MoCoV2,
    "moco_v3": MoCoV3,
    "instdisc": InstDisc,
    "invaspread": InvaSpread,
    "dim": DeepInfoMax,
    "amdim": AMDIM,
    "byol": BYOL,
    "clip": CLIP,
}

__all__ = ["AMDIM", "BYOL", "CLIP", "METHODS", "Context", "DeepInfoMax", "InstDisc", "InvaSpread", "Method", "MoCoV1",
           "MoCoV2", "MoCoV3", "SimCLR"]
