"""Methods: one file each. ``METHODS`` maps the config name to the class, nothing more."""

from selfsup.methods.base import Context, Method
from selfsup.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
}

__all__ = ["METHODS", "Context", "Method", "SimCLR"]
