"""Plotters, one per model family, each taking its evaluator's options and its own figure options:

- :func:`.manifold.plot_manifold` with :class:`.manifold.ManifoldFigures` (manifold models, vector data);
- :func:`.images.plot_images` with :class:`.images.ImageFigures` (manifold models, image data);
- :func:`.vq_flow.plot_vq_flow` with :class:`.vq_flow.AtlasFigures` (VQ-Flows and classic flows);
- :func:`.flow_vae.plot_flow_vae` with :class:`.flow_vae.VariationalFigures` (flow-VAEs).
"""
