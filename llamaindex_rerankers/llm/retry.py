"""Which errors say "this endpoint takes no logprobs"; the retry maths moved to
:mod:`llamaindex_rerankers.http.retry` (shared with the rerank service client) and is re-exported
here for older imports.

Example:
    >>> rejects_logprobs("logprobs is not supported with this model")
    True
"""

from __future__ import annotations

from llamaindex_rerankers.http.retry import (
    RETRYABLE_STATUSES,
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
    retry_after_from_headers,
    retry_delay,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "backoff_delay",
    "is_retryable_status",
    "parse_retry_after",
    "rejects_logprobs",
    "retry_after_from_headers",
    "retry_delay",
]

_RANGE_WORDS = ("maximum", "minimum", "less than", "greater than", "<=", ">=", "between", "range")


def rejects_logprobs(error_message: str) -> bool:
    """Whether a 400 answer's message says that the endpoint does not take logprobs.

    An out-of-range ``top_logprobs`` (e.g. above OpenAI's 20) is a setting to fix, not a missing
    capability, so it does not count.

    Example:
        >>> rejects_logprobs("logprobs is not supported with this model")
        True
        >>> rejects_logprobs("Invalid 'top_logprobs': integer above maximum value. Expected <= 20")
        False
        >>> rejects_logprobs("maximum context length is 8192 tokens")
        False
    """
    text = error_message.lower()
    if "logprob" not in text:
        return False
    return not ("top_logprobs" in text and any(word in text for word in _RANGE_WORDS))
