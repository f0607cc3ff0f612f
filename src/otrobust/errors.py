"""The one user-facing error type: a one-line message naming the bad input and the fix."""


class OtrobustError(Exception):
    """A problem with the user's input (config, data, checkpoint); the CLI prints it as one line."""
