"""Flow building blocks: compositions of nflows transforms, plus the few transforms nflows lacks."""

from .builders import coupling_flow, inner_flow

__all__ = ["coupling_flow", "inner_flow"]
