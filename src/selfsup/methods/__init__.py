"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.colorization import Colorization
from selfsup.methods.counting import Counting
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.inpainting import ContextEncoder
from selfsup.methods.jigsaw import Jigsaw
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
    "simclr": SimCLR,
    "deepcluster": DeepCluster,
    "sela": SeLa,
    "swav": SwAV,
    "pcl": PCL,
    "rotation": RotNet,
    "colorization": Colorization,
    "inpainting": ContextEncoder,
    "counting": Counting,
    "jigsaw": Jigsaw,
    "relative_position": RelativePosition,
    "transitive": Transitive,
    "multitask": MultiTask,
    "relic": ReLIC,
    "relicv2": ReLICv2,
}

__all__ = ["METHODS", "Colorization", "ContextEncoder", "Context", "Counting", "DeepCluster", "Jigsaw", "Method",
           "MultiTask", "PCL", "ReLIC", "ReLICv2", "RelativePosition", "RotNet", "SeLa", "SimCLR", "SwAV", "Transitive"]
