"""Likelihood labels and the pure maths that turns an LLM's answer into a relevance score.

The model is asked whether a passage is relevant and answers with one of a few **answer
codes**, each standing for a label with a value in [0, 1]. By default:

====  ===============  =====
code  label            value
====  ===============  =====
A     unlikely         0.0
B     likely           0.5
C     very likely      1.0
====  ===============  =====

**Why codes, not the words.** Scores are read from the log-probabilities of the *first* answer
token, so the labels must differ at their first token. The words do not reliably: SmolLM2's
tokenizer splits ``unlikely`` into ``un`` + ``likely`` and ``Likely`` into ``L`` + ..., and
``very likely`` starts with ``very`` whose probability says nothing about the word after it.
Single capital letters are one token each, with or without a leading space, in tiktoken's
``cl100k_base`` and ``o200k_base`` and in SmolLM2's tokenizer (``tests/llm/test_labels.py``
checks all three). Token variants that differ only in case or surrounding whitespace/punctuation
(``"C"``, ``" C"``, ``"c"``, ``"C."``) are merged into one label.

**Scoring** ("Beyond Yes and No", Zhuang et al. 2023): take the top-k alternatives at the first
answer position, sum the probability of the tokens of each label, renormalise over the label set
(tokens that are not labels are ignored), and score = Σ p(label) · value(label), the expected
relevance. Without log-probabilities, the label is parsed from the text and score = its value.

Example:
    >>> from llamaindex_rerankers.llm.types import TokenChoice
    >>> top = [TokenChoice("C", -0.2), TokenChoice("B", -2.0), TokenChoice("The", -3.0)]
    >>> probs = label_probs(top, DEFAULT_LABELS)
    >>> round(expected_relevance(probs, DEFAULT_LABELS), 2)
    0.93
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from llamaindex_rerankers.llm.types import GeneratedToken, TokenChoice

#: The label of a passage that could not be judged (no parseable answer, or a failed call).
UNKNOWN = "unknown"

# Characters stripped around a token before it is compared with the answer codes: models
# write "C", " C", "C.", "(C)", "**C**" or "'C'" for the same answer.
_STRIP = " \t\r\n\"'`*_()[]{}<>.,:;!?-"


def normalize_token(token: str) -> str:
    """A token as compared with answer codes: stripped of whitespace/punctuation, lower case.

    Example:
        >>> normalize_token(" **C.**")
        'c'
    """
    return token.strip(_STRIP).lower()


@dataclass(frozen=True)
class Label:
    """One graded label: its name, the code the model answers with, and its value.

    Attributes:
        name: what the label means, shown to the model and written to ``rerank_label``.
        code: what the model answers; compared case-insensitively, without surrounding
            whitespace and punctuation; should be one token in the model's tokenizer.
        value: relevance in [0, 1] this label stands for.

    Example:
        >>> Label("very likely", "C", 1.0).value
        1.0
    """

    name: str
    code: str
    value: float

    def __post_init__(self) -> None:
        if not self.name.strip() or self.name == UNKNOWN:
            raise ValueError(f"label name must be non-empty and not {UNKNOWN!r}, got {self.name!r}")
        if not normalize_token(self.code):
            raise ValueError(
                f"label {self.name!r} needs a code made of letters or digits, e.g. 'A'; "
                f"got {self.code!r}"
            )
        if not (math.isfinite(self.value) and 0.0 <= self.value <= 1.0):
            raise ValueError(f"label {self.name!r} value must be in [0, 1], got {self.value}")


#: unlikely (A) = 0, likely (B) = 0.5, very likely (C) = 1.
DEFAULT_LABELS: tuple[Label, ...] = (
    Label("unlikely", "A", 0.0),
    Label("likely", "B", 0.5),
    Label("very likely", "C", 1.0),
)


def validate_labels(labels: Sequence[Label]) -> tuple[Label, ...]:
    """Check a label set: at least two labels, distinct names and codes.

    Raises:
        ValueError: saying which labels clash.

    Example:
        >>> len(validate_labels(DEFAULT_LABELS))
        3
    """
    labels = tuple(labels)
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {len(labels)}")
    seen_names: set[str] = set()
    seen_codes: dict[str, str] = {}
    for label in labels:
        if label.name.lower() in seen_names:
            raise ValueError(f"duplicate label name {label.name!r}")
        seen_names.add(label.name.lower())
        code = normalize_token(label.code)
        if code in seen_codes:
            raise ValueError(
                f"labels {seen_codes[code]!r} and {label.name!r} share the code {label.code!r}; "
                "give every label its own code"
            )
        seen_codes[code] = label.name
    return labels


def first_answer_token(tokens: Sequence[GeneratedToken]) -> GeneratedToken | None:
    """The position that holds the answer: the first generated token with a letter or digit.

    Leading whitespace, quotes or markdown (``" "``, ``"**"``) are skipped; ``None`` when no
    token has any.

    Example:
        >>> tokens = [GeneratedToken("**", -0.1, ()), GeneratedToken("C", -0.2, ())]
        >>> first_answer_token(tokens).token
        'C'
    """
    for tok in tokens:
        if normalize_token(tok.token):
            return tok
    return None


def label_mass(top: Iterable[TokenChoice], labels: Sequence[Label]) -> dict[str, float]:
    """Probability mass per label among alternatives ``top``; unknown tokens are ignored and
    variants of one code (case, whitespace, punctuation) are added up.

    Example:
        >>> m = label_mass([TokenChoice("C", math.log(0.5)), TokenChoice(" c", math.log(0.25))],
        ...                DEFAULT_LABELS)
        >>> m["very likely"]
        0.75
    """
    by_code = {normalize_token(lab.code): lab.name for lab in labels}
    mass = dict.fromkeys((lab.name for lab in labels), 0.0)
    seen: set[str] = set()
    for choice in top:
        # A server may list the same token twice; count each distinct string once.
        if choice.token in seen:
            continue
        seen.add(choice.token)
        name = by_code.get(normalize_token(choice.token))
        if name is not None and math.isfinite(choice.logprob):
            mass[name] += math.exp(min(choice.logprob, 0.0))
    return mass


def renormalize(mass: Mapping[str, float]) -> dict[str, float] | None:
    """Scale non-negative masses to sum to 1; ``None`` when they sum to 0.

    Example:
        >>> renormalize({"a": 1.0, "b": 3.0})
        {'a': 0.25, 'b': 0.75}
    """
    if any(not math.isfinite(v) or v < 0 for v in mass.values()):
        raise ValueError(f"masses must be finite and >= 0, got {dict(mass)}")
    total = math.fsum(mass.values())
    if total <= 0.0:
        return None
    return {k: v / total for k, v in mass.items()}


def label_probs(top: Iterable[TokenChoice], labels: Sequence[Label]) -> dict[str, float] | None:
    """Probability of each label at one position, renormalised over the label set.

    ``None`` when no alternative is a label (then the text must be parsed instead).

    Example:
        >>> label_probs([TokenChoice("A", -0.1), TokenChoice("A", -0.1)], DEFAULT_LABELS)
        {'unlikely': 1.0, 'likely': 0.0, 'very likely': 0.0}
    """
    return renormalize(label_mass(top, labels))


def probs_from_tokens(
    tokens: Sequence[GeneratedToken], labels: Sequence[Label]
) -> dict[str, float] | None:
    """Label probabilities at the first answer token (see :func:`first_answer_token`).

    The chosen token is counted too, in case the server's ``top`` list omits it.

    Example:
        >>> t = GeneratedToken("B", -0.3, (TokenChoice("B", -0.3), TokenChoice("C", -1.5)))
        >>> max(probs_from_tokens([t], DEFAULT_LABELS).items(), key=lambda kv: kv[1])[0]
        'likely'
    """
    tok = first_answer_token(tokens)
    if tok is None:
        return None
    return label_probs((TokenChoice(tok.token, tok.logprob), *tok.top), labels)


def expected_relevance(probs: Mapping[str, float], labels: Sequence[Label]) -> float:
    """Σ p(label) · value(label), clamped to [0, 1] against rounding.

    Raises:
        KeyError: when ``probs`` names a label that is not in ``labels``.

    Example:
        >>> expected_relevance({"unlikely": 0.5, "likely": 0.5, "very likely": 0.0},
        ...                    DEFAULT_LABELS)
        0.25
    """
    values = {lab.name: lab.value for lab in labels}
    score = math.fsum(p * values[name] for name, p in probs.items())
    return min(1.0, max(0.0, score))


def most_probable(probs: Mapping[str, float], labels: Sequence[Label]) -> str:
    """The label with the highest probability; ties go to the label listed first.

    Example:
        >>> most_probable({"unlikely": 0.4, "likely": 0.4, "very likely": 0.2}, DEFAULT_LABELS)
        'unlikely'
    """
    best = max(labels, key=lambda lab: (probs.get(lab.name, 0.0), -labels.index(lab)))
    return best.name


def parse_text_label(text: str, labels: Sequence[Label]) -> Label | None:
    """The label an answer text gives, or ``None`` when it gives none or several.

    Accepts the code as a standalone token (``"C"``, ``"(C)"``, ``"Answer: C"``; codes that are
    single letters must be written in the same case, so the English word "a" is not read as
    code A) or the label's name, case-insensitively, longest names first (``"very likely"``
    before ``"likely"``; ``"unlikely"`` is not read as ``"likely"``). If the text names two
    different labels the answer is ambiguous and ``None`` is returned.

    Example:
        >>> parse_text_label("Answer: C (very likely)", DEFAULT_LABELS).name
        'very likely'
        >>> parse_text_label("I cannot tell.", DEFAULT_LABELS) is None
        True
    """
    found: dict[str, Label] = {}
    remaining = text
    for lab in sorted(labels, key=lambda lab: -len(lab.name)):
        pattern = re.compile(rf"(?<![\w-]){re.escape(lab.name)}(?![\w-])", re.IGNORECASE)
        if pattern.search(remaining):
            found[lab.name] = lab
            # Blank the match out so that "very likely" is not found again as "likely".
            remaining = pattern.sub(" ", remaining)
    for lab in labels:
        code = lab.code.strip()
        flags = 0 if len(code) == 1 else re.IGNORECASE
        if re.search(rf"(?<![\w']){re.escape(code)}(?![\w'])", remaining, flags):
            found[lab.name] = lab
    if len(found) != 1:
        return None
    return next(iter(found.values()))
