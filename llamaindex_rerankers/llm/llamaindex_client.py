"""Any LlamaIndex ``LLM`` as a :class:`~llamaindex_rerankers.llm.types.ChatClient`, so that
:class:`~llamaindex_rerankers.llm.reranker.LLMReranker` can judge with it
(:meth:`LLMReranker.from_llm <llamaindex_rerankers.llm.reranker.LLMReranker.from_llm>`).

* **Log-probabilities where the LLM class returns them.** LlamaIndex's ``OpenAI`` family
  (``OpenAI``, ``OpenAILike``, ``AzureOpenAI``: every subclass of
  ``llama_index.llms.openai.OpenAI``) used as a chat model takes ``logprobs=True,
  top_logprobs=k`` per call and returns ``ChatResponse.logprobs``; the reranker then scores by
  expected relevance. Such an LLM also gets ``max_tokens`` per call, unless its own
  ``max_tokens`` is set (which wins, in LlamaIndex). Answers without logprobs count towards the
  endpoint's switch to text mode (:mod:`llamaindex_rerankers.llm.capabilities`).
* **The text otherwise.** Any other LLM is called with the messages alone (LLM classes differ in
  which options they take) and its label is parsed from the answer text.
* **Identity** ``("llamaindex:<LLM class>", <model name>)``: the capability memory's key, and the
  default cache namespace ``"llamaindex:<class>|<model>"``.
* **Retries and timeouts are the LLM's own** (``max_retries``, ``timeout`` of the LLM); the
  reranker's deadline cuts a call short. Any exception becomes a
  :class:`~llamaindex_rerankers.llm.types.ChatClientError`, so a failing LLM labels passages
  ``unknown`` instead of failing the rerank.

Example:
    >>> from llama_index.core.llms.mock import MockLLM
    >>> LlamaIndexChatClient(MockLLM()).identity
    ('llamaindex:MockLLM', 'unknown')
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole

from llamaindex_rerankers.llm.capabilities import (
    logprobs_supported,
    record_logprobs_answer,
    record_logprobs_rejected,
)
from llamaindex_rerankers.llm.retry import rejects_logprobs
from llamaindex_rerankers.llm.types import ChatClientError, ChatResult, GeneratedToken, TokenChoice


def takes_openai_options(llm: Any) -> bool:
    """Whether ``llm`` is one of LlamaIndex's OpenAI chat LLMs, which take ``logprobs``,
    ``top_logprobs`` and ``max_tokens`` per call (decided from the class, without importing
    ``llama_index.llms.openai``).

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> takes_openai_options(MockLLM())
        False
    """
    from_openai = any(
        cls.__name__ == "OpenAI" and cls.__module__.startswith("llama_index.llms.openai")
        for cls in type(llm).__mro__
    )
    metadata = getattr(llm, "metadata", None)
    return from_openai and bool(getattr(metadata, "is_chat_model", False))


def llm_model_name(llm: Any) -> str:
    """The LLM's model name: its ``model`` field, else ``metadata.model_name``.

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> llm_model_name(MockLLM())
        'unknown'
    """
    model = getattr(llm, "model", None)
    if isinstance(model, str) and model:
        return model
    metadata = getattr(llm, "metadata", None)
    return str(getattr(metadata, "model_name", None) or "unknown")


class LlamaIndexChatClient:
    """:class:`~llamaindex_rerankers.llm.types.ChatClient` over a LlamaIndex ``LLM``.

    Args:
        llm: any ``llama_index.core.llms.LLM``.
    """

    def __init__(self, llm: Any) -> None:
        if not callable(getattr(llm, "achat", None)):
            raise TypeError(
                f"llm must be a LlamaIndex LLM (with achat), got a {type(llm).__name__}; for an "
                "OpenAI-compatible server pass model= and base_url= instead."
            )
        self.llm = llm
        self._identity = (f"llamaindex:{type(llm).__name__}", llm_model_name(llm))
        self._logprobs = takes_openai_options(llm)

    def __repr__(self) -> str:
        return f"LlamaIndexChatClient({type(self.llm).__name__}, model={self._identity[1]!r})"

    @property
    def identity(self) -> tuple[str, str]:
        """``("llamaindex:<LLM class>", <model name>)``."""
        return self._identity

    async def achat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        deadline: float | None = None,
    ) -> ChatResult:
        """One ``llm.achat`` call; see the module docstring for what is passed.

        Raises:
            ChatClientError: the LLM raised, or the deadline passed.
        """
        chat = [ChatMessage(role=MessageRole(m["role"]), content=m["content"]) for m in messages]
        want = bool(logprobs) and self._logprobs and logprobs_supported(self._identity) is not False
        options: dict[str, Any] = {"max_tokens": max_tokens} if self._logprobs else {}
        attempts = 0
        while True:
            attempts += 1
            if want:
                options.update(logprobs=True, top_logprobs=top_logprobs)
            else:
                options.pop("logprobs", None)
                options.pop("top_logprobs", None)
            try:
                response = await self._call(chat, options, deadline, attempts)
            except ChatClientError as exc:
                if want and exc.status in (400, 422) and rejects_logprobs(str(exc)):
                    record_logprobs_rejected(self._identity, str(exc))
                    want = False
                    continue  # re-ask at once without logprobs
                raise
            break
        tokens = _tokens(response) if want else None
        if want:
            record_logprobs_answer(self._identity, has_logprobs=tokens is not None)
        prompt_tokens, completion_tokens = _usage(response)
        return ChatResult(
            text=str(response.message.content or ""),
            tokens=tokens,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            attempts=attempts,
        )

    async def _call(
        self,
        chat: list[ChatMessage],
        options: dict[str, Any],
        deadline: float | None,
        attempts: int,
    ) -> ChatResponse:
        name = type(self.llm).__name__
        try:
            if deadline is None:
                return await self.llm.achat(chat, **options)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChatClientError(f"{name}: the deadline passed", attempts=attempts - 1)
            return await asyncio.wait_for(self.llm.achat(chat, **options), timeout=left)
        except ChatClientError:
            raise
        except asyncio.TimeoutError as exc:
            raise ChatClientError(
                f"{name}: the deadline passed during the call", attempts=attempts
            ) from exc
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            raise ChatClientError(
                f"{name} ({self._identity[1]}) failed: {exc}",
                status=status if isinstance(status, int) else None,
                attempts=attempts,
            ) from exc


def _tokens(response: ChatResponse) -> tuple[GeneratedToken, ...] | None:
    """``ChatResponse.logprobs`` (the top alternatives per generated position) as generated
    tokens; the chosen token is the most probable alternative (temperature 0)."""
    positions = getattr(response, "logprobs", None)
    if not positions:
        return None
    tokens = []
    for top in positions:
        choices = tuple(TokenChoice(str(lp.token), float(lp.logprob)) for lp in top)
        if not choices:
            continue
        best = max(choices, key=lambda c: c.logprob)
        tokens.append(GeneratedToken(best.token, best.logprob, choices))
    return tuple(tokens) or None


def _usage(response: ChatResponse) -> tuple[int, int]:
    extra = response.additional_kwargs or {}
    usage = getattr(response.raw, "usage", None) if response.raw is not None else None
    if isinstance(response.raw, Mapping):
        usage = response.raw.get("usage")

    def pick(name: str) -> int:
        value = extra.get(name)
        if value is None and usage is not None:
            value = usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)
        try:
            return max(0, int(value or 0))
        except (TypeError, ValueError):
            return 0

    return pick("prompt_tokens"), pick("completion_tokens")
