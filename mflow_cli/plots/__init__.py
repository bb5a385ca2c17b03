"""Plotters: the figures ``mflow plot`` draws for each kind of model."""
