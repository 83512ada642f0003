"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.jigsaw import Jigsaw
from selfsup.methods.multitask import MultiTask
from selfsup.methods.relative_position import RelativePosition
from selfsup.methods.simclr import SimCLR
from selfsup.methods.transitive import Transitive

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "jigsaw": Jigsaw,
    "relative_position": RelativePosition,
    "transitive": Transitive,
    "multitask": MultiTask,
}

__all__ = ["METHODS", "Context", "Jigsaw", "Method", "MultiTask", "RelativePosition", "SimCLR", "Transitive"]
