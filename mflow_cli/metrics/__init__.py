"""Evaluators, one per model family, each with its options dataclass (the catalog lists them):

- :func:`.manifold.evaluate_manifold` with :class:`.manifold.ManifoldEvaluation` (manifold models, vector data);
- :func:`.images.evaluate_images` with :class:`.images.ImageEvaluation` (manifold models, image data);
- :func:`.vq_flow.evaluate_vq_flow` with :class:`.vq_flow.AtlasEvaluation` (VQ-Flows and classic flows);
- :func:`.flow_vae.evaluate_flow_vae` with :class:`.flow_vae.VariationalEvaluation` (flow-VAEs).
"""
