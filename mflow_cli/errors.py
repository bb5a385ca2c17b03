"""The one exception type users see: a one-line message, exit code 2, no traceback."""


class MflowError(Exception):
    """Bad user input (recipe, file, option). The CLI prints ``str(err)`` and exits with code 2."""

    exit_code = 2
