"""User-facing errors.

A :class:`KoaError` is a problem with the user's input (a missing folder, an unreadable
image, a bad option). The CLI prints it as one line, ``koa: error: ...``, and exits with
status 2, never with a traceback. :func:`printable` is how a file name is shown on a
terminal: a control character in it (a newline, an escape sequence) cannot forge a line.
"""

__all__ = ["KoaError", "printable"]


class KoaError(Exception):
    """An error caused by the user's input, reported without a traceback."""


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, tab, ESC, other C0/C1 control
    characters, line separators) written as a Python escape such as ``\\n`` or ``\\x1b``;
    letters of every script, and spaces, are kept as they are."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
