"""selfsup: self-supervised visual representation learning under one design."""

__version__ = "0.1.0"
