"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.amdim import AMDIM
from selfsup.methods.base import Context, Method
from selfsup.methods.byol import BYOL
from selfsup.methods.clip import CLIP
from selfsup.methods.colorization import Colorization
from selfsup.methods.counting import Counting
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.dim import DeepInfoMax
from selfsup.methods.inpainting import ContextEncoder
from selfsup.methods.instdisc import InstDisc
from selfsup.methods.invaspread import InvaSpread
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.moco import MoCoV1, MoCoV2
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.multitask import MultiTask
from selfsup.methods.pcl import PCL
from selfsup.methods.relative_position import RelativePosition
from selfsup.methods.relic import ReLIC, ReLICv2
from selfsup.methods.rotation import RotNet
from selfsup.methods.sela import SeLa
from selfsup.methods.simclr import SimCLR
from selfsup.methods.swav import SwAV
from selfsup.methods.transitive import Transitive

METHODS: dict[str, type[Method]] = {
    # contrastive: in-batch, memory bank, momentum queue, end-to-end; and BYOL without negatives
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
    # clustering
    "deepcluster": DeepCluster,
    "sela": SeLa,
    "swav": SwAV,
    "pcl": PCL,
    # likelihood contrast with invariance
    "relic": ReLIC,
    "relicv2": ReLICv2,
    # pretext tasks
    "rotation": RotNet,
    "colorization": Colorization,
    "inpainting": ContextEncoder,
    "counting": Counting,
    "jigsaw": Jigsaw,
    "relative_position": RelativePosition,
    "transitive": Transitive,
    "multitask": MultiTask,
}

__all__ = ["AMDIM", "BYOL", "CLIP", "METHODS", "Colorization", "Context", "ContextEncoder", "Counting", "DeepCluster",
           "DeepInfoMax", "InstDisc", "InvaSpread", "Jigsaw", "Method", "MoCoV1", "MoCoV2", "MoCoV3", "MultiTask",
           "PCL", "ReLIC", "ReLICv2", "RelativePosition", "RotNet", "SeLa", "SimCLR", "SwAV", "Transitive"]
