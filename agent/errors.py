"""Errors the command line reports as a clear message with exit code 2."""


class UsageError(Exception):
    """Bad arguments or an unusable path: said on stderr with exit code 2."""
