"""Evaluators: what ``mflow evaluate`` computes for each kind of model (and the Fréchet distance)."""
