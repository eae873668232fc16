"""The pure label maths: token extraction, renormalisation, expected relevance, text parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamaindex_rerankers.llm.labels import (
    DEFAULT_LABELS,
    Label,
    expected_relevance,
    first_answer_token,
    label_mass,
    label_probs,
    most_probable,
    normalize_token,
    parse_text_label,
    probs_from_tokens,
    renormalize,
    validate_labels,
)
from llamaindex_rerankers.llm.tokens import tiktoken_encoding
from llamaindex_rerankers.llm.types import GeneratedToken, TokenChoice

NAMES = [lab.name for lab in DEFAULT_LABELS]
logprob = st.floats(min_value=-30.0, max_value=0.0, allow_nan=False)


def lp(p: float) -> float:
    return math.log(p)


# -- first-token distinctness of the answer codes for three real tokenizers ---------------


def _first_tokens_tiktoken(name: str, text: str) -> str:
    enc = tiktoken_encoding(name)
    return str(enc.decode([enc.encode(text)[0]]))


@pytest.fixture(scope="module")
def smollm2_vocab(gguf_path: str):  # type: ignore[no-untyped-def]
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)


def _first_token_smollm2(vocab, text: str) -> str:  # type: ignore[no-untyped-def]
    ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
    return str(vocab.detokenize([ids[0]]).decode())


@pytest.mark.parametrize("prefix", ["", " "])
def test_default_codes_are_whole_distinct_first_tokens(prefix: str, smollm2_vocab) -> None:  # type: ignore[no-untyped-def]
    tokenizers = {
        "cl100k_base": lambda t: _first_tokens_tiktoken("cl100k_base", t),
        "o200k_base": lambda t: _first_tokens_tiktoken("o200k_base", t),
        "smollm2": lambda t: _first_token_smollm2(smollm2_vocab, t),
    }
    for name, first in tokenizers.items():
        firsts = [first(prefix + lab.code) for lab in DEFAULT_LABELS]
        # The first token *is* the whole code, so its probability is the label's probability.
        assert [normalize_token(f) for f in firsts] == [
            lab.code.lower() for lab in DEFAULT_LABELS
        ], name
        assert len(set(firsts)) == len(firsts), name


def test_label_words_would_not_be_distinguishable_for_smollm2(smollm2_vocab) -> None:  # type: ignore[no-untyped-def]
    # Why codes: "unlikely" starts with "un" and "Likely" with "L" for SmolLM2, and
    # "very likely" starts with "very", which says nothing about the word that follows.
    assert _first_token_smollm2(smollm2_vocab, "unlikely") != "unlikely"
    assert _first_token_smollm2(smollm2_vocab, "very likely") == "very"


# -- token extraction and label mass ------------------------------------------------------


def test_first_answer_token_skips_whitespace_and_markup() -> None:
    tokens = [GeneratedToken(" ", -0.1, ()), GeneratedToken("**", -0.1, ()),
              GeneratedToken("B", -0.2, ()), GeneratedToken("C", -0.2, ())]  # fmt: skip
    tok = first_answer_token(tokens)
    assert tok is not None and tok.token == "B"
    assert first_answer_token([GeneratedToken("\n", -0.1, ())]) is None
    assert first_answer_token([]) is None


def test_label_mass_merges_case_space_and_punctuation_variants() -> None:
    pairs = [("C", 0.4), (" C", 0.2), ("c", 0.1), ("C.", 0.05), ("B", 0.1), ("The", 0.15)]
    top = [TokenChoice(t, lp(p)) for t, p in pairs]
    mass = label_mass(top, DEFAULT_LABELS)
    assert mass["very likely"] == pytest.approx(0.75)
    assert mass["likely"] == pytest.approx(0.1)
    assert mass["unlikely"] == 0.0


def test_label_probs_ignores_unknown_tokens_and_none_without_labels() -> None:
    probs = label_probs([TokenChoice("A", lp(0.1)), TokenChoice("The", lp(0.8)),
                         TokenChoice("C", lp(0.1))], DEFAULT_LABELS)  # fmt: skip
    assert probs == pytest.approx({"unlikely": 0.5, "likely": 0.0, "very likely": 0.5})
    assert label_probs([TokenChoice("The", lp(0.9))], DEFAULT_LABELS) is None


def test_duplicate_token_strings_are_counted_once() -> None:
    probs = label_probs([TokenChoice("A", lp(0.3)), TokenChoice("A", lp(0.3)),
                         TokenChoice("C", lp(0.3))], DEFAULT_LABELS)  # fmt: skip
    assert probs is not None and probs["unlikely"] == pytest.approx(0.5)


def test_probs_from_tokens_counts_the_chosen_token_missing_from_top() -> None:
    tok = GeneratedToken("C", lp(0.6), (TokenChoice("B", lp(0.2)),))
    probs = probs_from_tokens([tok], DEFAULT_LABELS)
    assert probs == pytest.approx({"unlikely": 0.0, "likely": 0.25, "very likely": 0.75})


def test_expected_relevance_by_hand() -> None:
    probs = {"unlikely": 0.2, "likely": 0.3, "very likely": 0.5}
    assert expected_relevance(probs, DEFAULT_LABELS) == pytest.approx(0.3 * 0.5 + 0.5)
    custom = (Label("no", "N", 0.0), Label("yes", "Y", 1.0))
    assert expected_relevance({"no": 0.25, "yes": 0.75}, custom) == pytest.approx(0.75)


def test_most_probable_and_ties() -> None:
    assert (
        most_probable({"unlikely": 0.1, "likely": 0.2, "very likely": 0.7}, DEFAULT_LABELS)
        == "very likely"
    )
    assert (
        most_probable({"unlikely": 0.5, "likely": 0.5, "very likely": 0.0}, DEFAULT_LABELS)
        == "unlikely"
    )


def test_renormalize_edge_cases() -> None:
    assert renormalize({"a": 0.0, "b": 0.0}) is None
    with pytest.raises(ValueError, match="finite"):
        renormalize({"a": -1.0})


# -- label sets -----------------------------------------------------------------------------


def test_bad_label_sets_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="share the code"):
        validate_labels([Label("no", "A", 0.0), Label("yes", " a", 1.0)])
    with pytest.raises(ValueError, match="at least two"):
        validate_labels([Label("yes", "Y", 1.0)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Label("yes", "Y", 1.5)
    with pytest.raises(ValueError, match="code"):
        Label("yes", " ** ", 1.0)
    with pytest.raises(ValueError, match="unknown"):
        Label("unknown", "U", 0.0)


# -- text parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C", "very likely"),
        (" B", "likely"),
        ("(A)", "unlikely"),
        ("Answer: C", "very likely"),
        ("**B**", "likely"),
        ("C (very likely)", "very likely"),
        ("very likely", "very likely"),
        ("Unlikely.", "unlikely"),
        ("It is likely.", "likely"),
        ("The passage is VERY LIKELY relevant", "very likely"),
        ("I cannot tell.", None),
        ("", None),
        ("a passage", None),  # lower-case "a" is an article, not code A
        ("A or C", None),  # two labels: ambiguous
        ("likely, or maybe unlikely", None),
    ],
)
def test_parse_text_label(text: str, expected: str | None) -> None:
    label = parse_text_label(text, DEFAULT_LABELS)
    assert (None if label is None else label.name) == expected


# -- properties ------------------------------------------------------------------------------

choices = st.lists(
    st.tuples(st.sampled_from(["A", " A", "a", "B", " B", "C", " C", "c.", "The", "x", "Yes"]),
              logprob),
    min_size=0, max_size=12,
)  # fmt: skip


@given(choices)
def test_probs_sum_to_one_and_score_is_in_unit_interval(pairs: list[tuple[str, float]]) -> None:
    probs = label_probs([TokenChoice(t, p) for t, p in pairs], DEFAULT_LABELS)
    if probs is None:
        assert all(normalize_token(t) not in {"a", "b", "c"} for t, _ in pairs)
        return
    assert math.fsum(probs.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert 0.0 <= expected_relevance(probs, DEFAULT_LABELS) <= 1.0


@given(choices, st.sampled_from(["The", "x", "Yes", "Irrelevant"]), logprob)
def test_unknown_tokens_do_not_change_the_probabilities(
    pairs: list[tuple[str, float]], junk: str, junk_lp: float
) -> None:
    distinct = dict(pairs)  # one entry per token string, as a server gives them
    top = [TokenChoice(t, p) for t, p in distinct.items() if t != junk]
    with_junk = [*top, TokenChoice(junk, junk_lp)]
    assert label_probs(top, DEFAULT_LABELS) == label_probs(with_junk, DEFAULT_LABELS)


@given(logprob, logprob, logprob, st.floats(min_value=0.0, max_value=5.0))
def test_score_is_monotone_in_the_very_likely_mass(
    a: float, b: float, c: float, bump: float
) -> None:
    def score(c_lp: float) -> float:
        top = [TokenChoice("A", a), TokenChoice("B", b), TokenChoice("C", c_lp)]
        probs = label_probs(top, DEFAULT_LABELS)
        assert probs is not None
        return expected_relevance(probs, DEFAULT_LABELS)

    higher = min(0.0, c + bump)
    assert score(higher) >= score(c) - 1e-12


@given(st.lists(logprob, min_size=3, max_size=3))
def test_leading_space_and_case_variants_score_like_the_plain_codes(lps: list[float]) -> None:
    plain = [TokenChoice(code, p) for code, p in zip("ABC", lps, strict=True)]
    varied = [TokenChoice(code, p) for code, p in zip([" a", "B", " c"], lps, strict=True)]
    assert label_probs(plain, DEFAULT_LABELS) == label_probs(varied, DEFAULT_LABELS)
