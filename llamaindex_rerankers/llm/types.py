"""The LLM layer's data types and the :class:`ChatClient` protocol: pure records, no I/O.

Everything the reranker and the label maths need to describe one chat answer lives here, so that
they never import a client: :class:`TokenChoice` and :class:`GeneratedToken` (log-probabilities),
:class:`ChatResult` (one successful answer), :class:`ChatClientError` (one final failure) and
:class:`ChatClient`, the door that :class:`~llamaindex_rerankers.llm.openai_client.OpenAIChatClient`
and :class:`~llamaindex_rerankers.llm.llamaindex_client.LlamaIndexChatClient` implement (and that
tests implement with scripted fakes).

Example:
    >>> top = (TokenChoice("C", -0.2), TokenChoice("B", -2.0))
    >>> result = ChatResult("C", (GeneratedToken("C", -0.2, top),), 50, 1, attempts=1)
    >>> result.tokens[0].top[1].token
    'B'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class TokenChoice:
    """One alternative at a generated position (an entry of ``top_logprobs``).

    Example:
        >>> TokenChoice(token="A", logprob=-0.1).logprob
        -0.1
    """

    token: str
    logprob: float


@dataclass(frozen=True)
class GeneratedToken:
    """A generated token with its log-probability and the top alternatives at its position.

    Example:
        >>> t = GeneratedToken("A", -0.1, (TokenChoice("A", -0.1), TokenChoice("B", -2.4)))
        >>> [c.token for c in t.top]
        ['A', 'B']
    """

    token: str
    logprob: float
    top: tuple[TokenChoice, ...]


@dataclass(frozen=True)
class ChatResult:
    """What one successful chat call returned.

    Attributes:
        text: the message content (``""`` if none).
        tokens: the generated tokens with log-probabilities, or ``None`` when logprobs were not
            asked for, or the endpoint does not give them.
        prompt_tokens: prompt tokens as reported by the server (0 if it reports none).
        completion_tokens: generated tokens as reported by the server (0 if none).
        attempts: HTTP attempts made, 1 when the first one succeeded.
        prompt_tokens_evaluated: prompt tokens the server actually computed for this request
            (llama-server's ``timings.prompt_n``); ``None`` when the server does not say.
        prompt_tokens_cached: prompt tokens the server reused from its cache instead
            (llama-server's ``timings.cache_n``, or OpenAI's
            ``usage.prompt_tokens_details.cached_tokens``); ``None`` when the server does not say.

    Example:
        >>> r = ChatResult(text="A", tokens=None, prompt_tokens=50, completion_tokens=1, attempts=1)
        >>> r.prompt_tokens_evaluated is None
        True
    """

    text: str
    tokens: tuple[GeneratedToken, ...] | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    prompt_tokens_evaluated: int | None = None
    prompt_tokens_cached: int | None = None


class ChatClientError(RuntimeError):
    """A chat call failed for good: retries spent, deadline reached or a non-retryable answer.

    Attributes:
        status: HTTP status of the last answer, ``None`` for connection errors, timeouts and
            malformed bodies.
        attempts: HTTP attempts made.

    Example:
        >>> str(ChatClientError("HTTP 500 three times", status=500, attempts=3))
        'HTTP 500 three times'
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


@runtime_checkable
class ChatClient(Protocol):
    """What the LLM reranker needs from a chat endpoint.

    Implementations: :class:`~llamaindex_rerankers.llm.openai_client.OpenAIChatClient` (any
    OpenAI-compatible server) and
    :class:`~llamaindex_rerankers.llm.llamaindex_client.LlamaIndexChatClient` (any LlamaIndex
    ``LLM``). The reranker runs every ``achat`` on its one background event loop, so an
    implementation may keep loop-bound resources (connection pools) after the first call.
    """

    @property
    def identity(self) -> tuple[str, str]:
        """``(base_url, model)``: the key of the capability memory, and the default cache
        namespace ``"base_url|model"``."""
        ...

    async def achat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        deadline: float | None = None,
    ) -> ChatResult:
        """Send one chat request; raise :class:`ChatClientError` on final failure."""
        ...
