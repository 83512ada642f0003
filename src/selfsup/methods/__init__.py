"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.colorization import Colorization
from selfsup.methods.counting import Counting
from selfsup.methods.inpainting import ContextEncoder
from selfsup.methods.rotation import RotNet
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "rotation": RotNet,
    "colorization": Colorization,
    "inpainting": ContextEncoder,
    "counting": Counting,
}

__all__ = ["METHODS", "Colorization", "ContextEncoder", "Context", "Counting", "Method", "RotNet", "SimCLR"]
