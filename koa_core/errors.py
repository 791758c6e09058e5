"""User-facing errors.

A :class:`KoaError` is a problem with the user's input (a missing folder, an unreadable
image, a bad option). The CLI prints it as one line, ``koa: error: ...``, and exits with
status 2, never with a traceback.
"""

__all__ = ["KoaError"]


class KoaError(Exception):
    """An error caused by the user's input, reported without a traceback."""
