"""Token budgets: cut queries and passages to a number of tokens before they reach the LLM.

For OpenAI model names the count is exact, with tiktoken; it works offline because
``TIKTOKEN_CACHE_DIR`` is pointed at the encodings that llama-index-core ships (only when the
variable is unset, and before tiktoken first loads an encoding). For other models (local GGUF
files, other vendors) the count is an approximation: 4 characters per token, cutting at a word
boundary. Truncation is reported to the caller, never silent.

Example:
    >>> counter = TokenCounter.for_model("gpt-4o-mini")  # doctest: +SKIP
    >>> counter.truncate("one two three four", 2)  # doctest: +SKIP
    ('one two', True)
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamaindex_rerankers._imports import require

logger = logging.getLogger(__name__)

#: Characters per token assumed when the model's tokenizer is unknown.
CHARS_PER_TOKEN = 4

_ENCODINGS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _point_tiktoken_at_bundled_cache() -> None:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return
    import llama_index.core

    bundled = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    if bundled.is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)


def tiktoken_encoding(name: str) -> Any:
    """A tiktoken encoding by name (``"cl100k_base"``, ``"o200k_base"``), loaded offline.

    Example:
        >>> tiktoken_encoding("cl100k_base").encode("hello")  # doctest: +SKIP
        [15339]
    """
    with _LOCK:
        if name not in _ENCODINGS:
            _point_tiktoken_at_bundled_cache()
            _ENCODINGS[name] = require("tiktoken").get_encoding(name)
        return _ENCODINGS[name]


def encoding_name_for_model(model: str) -> str | None:
    """tiktoken's encoding for an OpenAI model name, ``None`` for other models.

    Example:
        >>> encoding_name_for_model("gpt-4o-mini")
        'o200k_base'
        >>> encoding_name_for_model("/models/SmolLM2-135M.gguf") is None
        True
    """
    _point_tiktoken_at_bundled_cache()
    tiktoken_model = require("tiktoken.model")
    try:
        return str(tiktoken_model.encoding_name_for_model(model))
    except KeyError:
        return None


@dataclass(frozen=True)
class TokenCounter:
    """Counts and truncates text with one tokenizer, exact or approximate.

    Attributes:
        encoding: tiktoken encoding name, or ``None`` for the chars/4 approximation.
    """

    encoding: str | None = None

    @classmethod
    def for_model(cls, model: str) -> TokenCounter:
        """tiktoken for OpenAI model names, the approximation otherwise.

        Example:
            >>> TokenCounter.for_model("my-local-model").encoding is None
            True
        """
        return cls(encoding_name_for_model(model))

    @property
    def exact(self) -> bool:
        """Whether counts come from the model's own tokenizer."""
        return self.encoding is not None

    def count(self, text: str) -> int:
        """Tokens in ``text``.

        Example:
            >>> TokenCounter().count("abcdefgh")
            2
        """
        if self.encoding is None:
            return -(-len(text) // CHARS_PER_TOKEN)
        return len(tiktoken_encoding(self.encoding).encode(text, disallowed_special=()))

    def truncate(self, text: str, budget: int | None) -> tuple[str, bool]:
        """``text`` cut to at most ``budget`` tokens, and whether it was cut.

        ``None`` means no budget.

        Example:
            >>> TokenCounter().truncate("one two three four five", 3)
            ('one two', True)
        """
        if budget is None:
            return text, False
        if budget < 1:
            raise ValueError(f"token budget must be >= 1, got {budget}")
        if self.encoding is None:
            limit = budget * CHARS_PER_TOKEN
            if len(text) <= limit:
                return text, False
            cut = text[:limit]
            space = cut.rfind(" ")
            # Cut at the last word boundary unless that would throw away most of the budget.
            if space > limit // 2:
                cut = cut[:space]
            return cut.rstrip(), True
        enc = tiktoken_encoding(self.encoding)
        ids = enc.encode(text, disallowed_special=())
        if len(ids) <= budget:
            return text, False
        return enc.decode(ids[:budget]), True
