"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.pcl import PCL
from selfsup.methods.sela import SeLa
from selfsup.methods.simclr import SimCLR
from selfsup.methods.swav import SwAV

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "deepcluster": DeepCluster,
    "sela": SeLa,
    "swav": SwAV,
    "pcl": PCL,
}

__all__ = ["METHODS", "Context", "DeepCluster", "Method", "PCL", "SeLa", "SimCLR", "SwAV"]
