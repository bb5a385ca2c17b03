"""The application layer: the ``mflow`` command, run folders, the recipe schema and the catalog of names.

It sits on top of the library (models, flows, datasets, metrics, plots, training, kernels), which imports
nothing from here and can be used from Python alone.
"""
