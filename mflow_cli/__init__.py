"""mflow: normalizing flows for data on (or near) low-dimensional manifolds."""

__version__ = "0.1.0"
