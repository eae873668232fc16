"""Long passages as overlapping windows, and MaxP: pure functions, no models, no I/O.

A passage longer than a reranker's token budget is split into windows that each fit the budget
(counted with the caller's token counter), consecutive windows sharing about ``overlap`` tokens so
that a sentence cut by one window boundary is whole in the next window. Windows end at word
boundaries; a single word longer than the whole budget is cut by characters. Every window is
scored and the passage gets the best window's score (MaxP, Dai & Callan 2019).

Example:
    >>> count = lambda text: len(text.split())  # one token per word
    >>> [w.text for w in split_windows("a b c d e f", budget=4, count=count, overlap=2)]
    ['a b c d', 'c d e f']
    >>> max_passage([0.2, None, 0.9, 0.9])
    (2, 0.9)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

#: A reranker's handling of passages longer than its token budget: cut them, or window them.
LongText = Literal["truncate", "windows"]
#: Default overlap of consecutive windows: a quarter of the window budget.
DEFAULT_WINDOW_OVERLAP = 0.25

#: Words with the whitespace that follows them: the places where a window may start or end.
_PIECE = re.compile(r"\s*\S+\s*")


class Window(NamedTuple):
    """One window of a passage: its character offset in the passage and its text.

    ``text`` is ``passage[offset:offset + len(text)]``: a slice, never rewritten.
    """

    offset: int
    text: str


def overlap_tokens(overlap: float, budget: int) -> int:
    """The overlap in tokens: a fraction in [0, 1) of ``budget``, or a whole number of tokens
    when ``overlap >= 1``; always less than ``budget`` (so that windows advance).

    Raises:
        ValueError: ``overlap`` is negative, or >= 1 and not a whole number.

    Example:
        >>> overlap_tokens(0.25, 100), overlap_tokens(32, 100), overlap_tokens(500, 100)
        (25, 32, 99)
    """
    if overlap < 0:
        raise ValueError(f"window overlap must be >= 0, got {overlap}")
    if overlap < 1:
        tokens = int(overlap * budget)
    elif float(overlap).is_integer():
        tokens = int(overlap)
    else:
        raise ValueError(
            f"window overlap {overlap} is neither a fraction in [0, 1) nor a whole number of "
            "tokens; pass e.g. 0.25 (a quarter of the budget) or 32 (tokens)."
        )
    return max(0, min(tokens, budget - 1))


def check_overlap(overlap: float) -> float:
    """``overlap`` if :func:`overlap_tokens` accepts it (a settings validator).

    Raises:
        ValueError: as :func:`overlap_tokens`.

    Example:
        >>> check_overlap(0.25)
        0.25
    """
    overlap_tokens(overlap, 2)
    return overlap


def split_windows(
    text: str, budget: int, count: Callable[[str], int], overlap: float = 0.25
) -> list[Window]:
    """``text`` as overlapping windows of at most ``budget`` tokens each (by ``count``).

    A text that fits is one window (the whole text, offset 0), and so is the empty text. The
    windows cover the text in order; each starts where the previous one's last ``overlap``
    tokens (see :func:`overlap_tokens`) start, at a word boundary, and always after the
    previous window's start. ``count`` is assumed to grow with the text (as every tokenizer's
    count does, up to a token at a boundary).

    Raises:
        ValueError: ``budget`` < 1 or a bad ``overlap``.

    Example:
        >>> count = lambda text: len(text.split())
        >>> split_windows("one two three four five", budget=3, count=count, overlap=1)
        [Window(offset=0, text='one two three'), Window(offset=8, text='three four five')]
    """
    if budget < 1:
        raise ValueError(f"window budget must be >= 1 token, got {budget}")
    shared = overlap_tokens(overlap, budget)
    if count(text) <= budget:
        return [Window(0, text)]
    bounds = _piece_bounds(text, budget, count)  # starts of pieces, plus len(text)
    n = len(bounds) - 1
    windows: list[Window] = []
    start = 0  # index into bounds
    while True:
        end = _window_end(text, bounds, start, budget, count)
        # Trailing whitespace is left out: the window is still a slice of the passage.
        windows.append(Window(bounds[start], text[bounds[start] : bounds[end]].rstrip()))
        if end >= n:
            return windows
        start = _next_start(text, bounds, start, end, shared, count)


def max_passage(scores: Sequence[float | None]) -> tuple[int, float] | None:
    """MaxP: the index and score of the best window; ``None`` scores (unjudged windows) are
    skipped; ties go to the earliest window; ``None`` when no window has a score.

    Example:
        >>> max_passage([0.5, 0.7, 0.7]), max_passage([None, None])
        ((1, 0.7), None)
    """
    best: tuple[int, float] | None = None
    for i, score in enumerate(scores):
        if score is not None and (best is None or score > best[1]):
            best = (i, score)
    return best


def best_window(
    windows: Sequence[Window], scores: Sequence[float | None]
) -> tuple[int, dict[str, int]]:
    """MaxP over one passage's windows, as both rerankers report it: the index of the best
    window (:func:`max_passage`; the first window when none has a score) and the node metadata
    that says which it was (``rerank_windows``, ``rerank_best_window_offset``).

    Example:
        >>> best_window([Window(0, "a b"), Window(2, "b c")], [0.2, 0.9])
        (1, {'rerank_windows': 2, 'rerank_best_window_offset': 2})
        >>> best_window([Window(0, "a b"), Window(2, "b c")], [None, None])[0]
        0
    """
    found = max_passage(scores)
    best = 0 if found is None else found[0]
    return best, {"rerank_windows": len(windows), "rerank_best_window_offset": windows[best].offset}


def _piece_bounds(text: str, budget: int, count: Callable[[str], int]) -> list[int]:
    """Start offsets of the pieces of ``text`` (words with their whitespace, a word too long
    for the budget cut by characters), then ``len(text)``."""
    bounds: list[int] = []
    for match in _PIECE.finditer(text):
        lo, hi = match.start(), match.end()
        while count(text[lo:hi]) > budget:
            bounds.append(lo)
            lo = _longest_fit(text, lo, hi, budget, count)
        bounds.append(lo)
    if not bounds or bounds[0] != 0:  # leading whitespace belongs to the first piece
        bounds[:1] = [0]
    bounds.append(len(text))
    return bounds


def _window_end(
    text: str, bounds: Sequence[int], start: int, budget: int, count: Callable[[str], int]
) -> int:
    """The last piece boundary such that the pieces from ``start`` to it fit the budget (at
    least one piece: each piece fits)."""
    lo = bounds[start]
    return _last_true(start + 1, len(bounds) - 1, lambda j: count(text[lo : bounds[j]]) <= budget)


def _next_start(
    text: str,
    bounds: Sequence[int],
    start: int,
    end: int,
    shared: int,
    count: Callable[[str], int],
) -> int:
    """The next window's first piece: the earliest after ``start`` whose text up to ``end``
    is at most ``shared`` tokens (``end`` itself, no overlap, when none is)."""
    hi = bounds[end]
    return _first_true(start + 1, end, lambda k: count(text[bounds[k] : hi]) <= shared)


def _longest_fit(text: str, lo: int, hi: int, budget: int, count: Callable[[str], int]) -> int:
    """The end of the longest ``text[lo:end]`` (``end`` <= ``hi``) that fits, at least
    ``lo + 1``."""
    return _last_true(lo + 1, hi, lambda end: count(text[lo:end]) <= budget)


def _last_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest i in [lo, hi] with ``ok(i)``, assuming ok is true then false; ``lo`` when
    none is (the caller's guaranteed minimum step)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _first_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest i in [lo, hi] with ``ok(i)``, assuming ok is false then true; ``hi`` when
    none is."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
