"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.relic import ReLIC, ReLICv2
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "relic": ReLIC,
    "relicv2": ReLICv2,
}

__all__ = ["METHODS", "Context", "Method", "ReLIC", "ReLICv2", "SimCLR"]
