"""The one error type for bad configuration or input.

Library constructors and readers raise :class:`ConfigError` with a message that names the argument (or
file) and what is wrong; the application layer adds where it came from (``recipe.yaml: model.latent_dim``)
and the CLI prints it as one line with exit code 2, never a traceback.
"""


class ConfigError(ValueError):
    """Bad user input (argument value, recipe, file, option): a one-line message, exit code 2."""

    exit_code = 2


class OutputError(Exception):
    """A write that failed (no space left, a read-only or vanished folder): one line naming the file, exit 1.

    The partial output is removed and the last checkpoint of a run is kept.
    """

    exit_code = 1
