"""One exception type for problems a user can fix; the CLI prints its message on one line, no traceback."""


class CadaError(Exception):
    """A user-facing error: the message names the file, line, field or flag at fault and how to fix it."""
