"""The windowing maths of long passages: coverage, overlap, budget, edge cases, MaxP."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from llamaindex_rerankers.windows import Window, max_passage, overlap_tokens, split_windows


def words(text: str) -> int:
    """One token per word: counts that are easy to check by hand."""
    return len(text.split())


def chars4(text: str) -> int:
    """The chars/4 approximation of the LLM token counter."""
    return -(-len(text) // 4)


TEXT = " ".join(f"w{i}" for i in range(23))


def test_windows_by_hand() -> None:
    got = split_windows(TEXT, budget=10, count=words, overlap=3)
    assert [w.text.split()[0] for w in got] == ["w0", "w7", "w14"]
    assert [words(w.text) for w in got] == [10, 10, 9]
    assert got[-1].text.endswith("w22")


@pytest.mark.parametrize("count", [words, chars4])
@pytest.mark.parametrize("budget", [1, 2, 5, 17])
@pytest.mark.parametrize("overlap", [0, 0.25, 0.5, 3])
def test_windows_cover_the_text_fit_the_budget_and_overlap(
    count: Callable[[str], int], budget: int, overlap: float
) -> None:
    counter = count
    text = "  Alpha beta, gamma!\n\ndelta " + " ".join(f"tok{i}" for i in range(60)) + " end."
    got = split_windows(text, budget, counter, overlap)
    assert len(got) > 1
    for w in got:
        assert text[w.offset : w.offset + len(w.text)] == w.text  # a slice of the passage
        assert counter(w.text) <= budget
    offsets = [w.offset for w in got]
    assert offsets == sorted(set(offsets)) and offsets[0] == 0  # in order, always advancing
    for a, b in itertools.pairwise(got):
        assert not text[a.offset + len(a.text) : b.offset].strip()  # no gap but whitespace
        shared = a.text[b.offset - a.offset :]
        assert counter(shared) <= overlap_tokens(overlap, budget)
    last = got[-1]
    assert last.offset + len(last.text) == len(text.rstrip())  # the end is covered
    covered = set()
    for w in got:
        covered.update(range(w.offset, w.offset + len(w.text)))
    assert all(i in covered for i, ch in enumerate(text.rstrip()) if not ch.isspace())


def test_overlap_repeats_the_tail_of_the_previous_window() -> None:
    got = split_windows(TEXT, budget=10, count=words, overlap=0.3)
    assert got[0].text.split()[-3:] == got[1].text.split()[:3]
    none = split_windows(TEXT, budget=10, count=words, overlap=0)
    assert [w.text.split()[0] for w in none] == ["w0", "w10", "w20"]


def test_short_text_is_one_window_and_so_is_the_empty_text() -> None:
    assert split_windows("short text", 5, words) == [Window(0, "short text")]
    assert split_windows("", 5, words) == [Window(0, "")]
    assert split_windows("   ", 5, words) == [Window(0, "   ")]


def test_a_word_longer_than_the_budget_is_cut_by_characters() -> None:
    text = "x" * 50 + " tail"
    got = split_windows(text, budget=4, count=chars4, overlap=0)
    assert got == [Window(0, "x" * 16), Window(16, "x" * 16), Window(32, "x" * 16),
                   Window(48, "xx tail")]  # fmt: skip


def test_overlap_tokens_and_bad_arguments() -> None:
    assert overlap_tokens(0, 10) == 0
    assert overlap_tokens(0.5, 10) == 5
    assert overlap_tokens(4, 10) == 4
    assert overlap_tokens(10, 10) == 9  # always leaves room to advance
    with pytest.raises(ValueError, match="fraction"):
        overlap_tokens(2.5, 10)
    with pytest.raises(ValueError, match=">= 0"):
        overlap_tokens(-0.1, 10)
    with pytest.raises(ValueError, match="budget"):
        split_windows("a b", 0, words)


def test_max_passage_takes_the_best_window_first_on_ties_and_skips_unjudged() -> None:
    assert max_passage([0.1, 0.8, 0.3]) == (1, 0.8)
    assert max_passage([0.8, 0.8]) == (0, 0.8)
    assert max_passage([None, 0.2, None]) == (1, 0.2)
    assert max_passage([None]) is None
    assert max_passage([]) is None
