"""How an error is shown to a person: the command line's stderr and the server's health checks."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (whitespace collapsed), or its type's name when it has none.

    Example:
        >>> one_line(ValueError("no index\\n  at ./chroma"))
        'no index at ./chroma'
        >>> one_line(TimeoutError())
        'TimeoutError'
    """
    return " ".join(str(exc).split()) or type(exc).__name__
