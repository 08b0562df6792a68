"""The one exception type that the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """A problem with what the user asked for (bad path, impossible budget, corrupt file...).

    The message must name the problem and, where possible, the fix. The CLI prints it on
    one line without a traceback and exits with status 2.
    """
