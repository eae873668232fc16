"""Any LlamaIndex ``LLM`` as a :class:`~llamaindex_rerankers.llm.types.ChatClient`, so that
:class:`~llamaindex_rerankers.llm.reranker.LLMReranker` can judge with it
(:meth:`LLMReranker.from_llm <llamaindex_rerankers.llm.reranker.LLMReranker.from_llm>`).

* **A judgement generates a few tokens, whatever the LLM's own settings.** It needs one token
  (``max_tokens``) when log-probabilities are read, ``text_max_tokens`` (8) when the label is
  read from the text. The LLM's own limit wins over per-call options in LlamaIndex (and
  ``OpenAILike``'s default is none: a small model then talks until its context is full), so
  the client judges with a *copy* of the LLM whose limit field is set to the bound: ``max_tokens``
  (the OpenAI family, Anthropic, Gemini, Mistral, Bedrock, ``MockLLM``...), ``max_new_tokens``
  (``HuggingFaceLLM``) or ``max_output_tokens``. The OpenAI family's ``additional_kwargs`` lose
  their ``max_tokens`` / ``max_completion_tokens`` in that copy. The user's LLM object is never
  changed; a copy is made again when it is. An LLM class with none of these fields is warned
  about at construction (:class:`UserWarning`), naming the setting to limit.
* **Chat, not completion.** An ``OpenAI``-family LLM with ``is_chat_model=False`` (the default
  of ``OpenAILike``) sends the judge prompt to ``/v1/completions`` as plain text, without the
  chat template and without log-probabilities: warned at construction; pass
  ``is_chat_model=True`` when the endpoint serves chat (llama.cpp, vLLM, Ollama, OpenAI do).
* **Log-probabilities where the LLM class returns them.** LlamaIndex's ``OpenAI`` family
  (``OpenAI``, ``OpenAILike``, ``AzureOpenAI``: every subclass of
  ``llama_index.llms.openai.OpenAI``) used as a chat model takes ``logprobs=True,
  top_logprobs=k`` per call and returns ``ChatResponse.logprobs``; the reranker then scores by
  expected relevance. Answers without logprobs count towards the endpoint's switch to text mode
  (:mod:`llamaindex_rerankers.llm.capabilities`).
* **The text otherwise.** Any other LLM is called with the messages alone (LLM classes differ in
  which options they take) and its label is parsed from the answer text.
* **Callbacks are the LLM's**: its ``callback_manager`` gets the ``CBEventType.LLM`` events of
  every judgement (LlamaIndex's own instrumentation of ``achat``), so token counting works as
  for any use of that LLM.
* **Identity** ``("llamaindex:<LLM class>", <model name>)``: the capability memory's key, and the
  default cache namespace ``"llamaindex:<class>|<model>"``.
* **Retries and timeouts are the LLM's own** (``max_retries``, ``timeout`` of the LLM); the
  reranker's deadline cuts a call short. Any exception becomes a
  :class:`~llamaindex_rerankers.llm.types.ChatClientError`, so a failing LLM labels passages
  ``unknown`` instead of failing the rerank.
* **Pickled as its LLM** (the copies are made again after loading).

Example:
    >>> from llama_index.core.llms.mock import MockLLM
    >>> LlamaIndexChatClient(MockLLM()).identity
    ('llamaindex:MockLLM', 'unknown')
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
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

#: Fields through which LLM classes limit what they generate, in the order they are looked for.
BOUND_FIELDS = ("max_tokens", "max_new_tokens", "max_output_tokens")
#: Request options of the OpenAI family that would override the copy's ``max_tokens``.
_OPENAI_LIMIT_OPTIONS = ("max_tokens", "max_completion_tokens")


def openai_family(llm: Any) -> bool:
    """Whether ``llm`` is one of LlamaIndex's ``OpenAI`` LLMs (``OpenAI``, ``OpenAILike``,
    ``AzureOpenAI``...), decided from the class without importing ``llama_index.llms.openai``.

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> openai_family(MockLLM())
        False
    """
    return any(
        cls.__name__ == "OpenAI" and cls.__module__.startswith("llama_index.llms.openai")
        for cls in type(llm).__mro__
    )


def bound_field(llm: Any) -> str | None:
    """The field of ``llm`` that limits the tokens it generates (see :data:`BOUND_FIELDS`),
    or ``None`` when it has none the reranker can set.

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> bound_field(MockLLM())
        'max_tokens'
    """
    fields = getattr(type(llm), "model_fields", None)
    if not isinstance(fields, Mapping) or not callable(getattr(llm, "model_copy", None)):
        return None
    return next((name for name in BOUND_FIELDS if name in fields), None)


def takes_openai_options(llm: Any) -> bool:
    """Whether ``llm`` is one of LlamaIndex's OpenAI chat LLMs, which take ``logprobs``,
    ``top_logprobs`` and ``max_tokens`` per call (decided from the class, without importing
    ``llama_index.llms.openai``).

    Example:
        >>> from llama_index.core.llms.mock import MockLLM
        >>> takes_openai_options(MockLLM())
        False
    """
    return openai_family(llm) and _is_chat_model(llm)


def _is_chat_model(llm: Any) -> bool:
    metadata = getattr(llm, "metadata", None)
    return bool(getattr(metadata, "is_chat_model", False))


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
        warn: warn (:class:`UserWarning`) when ``llm`` is a completion model of the OpenAI
            family, or has no field that bounds what it generates (see the module docstring).
    """

    def __init__(self, llm: Any, *, warn: bool = True) -> None:
        if not callable(getattr(llm, "achat", None)):
            raise TypeError(
                f"llm must be a LlamaIndex LLM (with achat), got a {type(llm).__name__}; for an "
                "OpenAI-compatible server pass model= and base_url= instead."
            )
        self.llm = llm
        self._identity = (f"llamaindex:{type(llm).__name__}", llm_model_name(llm))
        self._logprobs = takes_openai_options(llm)
        self._bound_field = bound_field(llm)
        # bound -> (the LLM's fields when the copy was made, the copy)
        self._bounded: dict[int, tuple[dict[str, Any], Any]] = {}
        self._bounded_lock = threading.Lock()
        if warn:
            for problem in self._problems():
                warnings.warn(problem, UserWarning, stacklevel=2)

    def _problems(self) -> list[str]:
        """What will make judgements slow or unreadable with this LLM, said at construction."""
        name = type(self.llm).__name__
        found = []
        if openai_family(self.llm) and not _is_chat_model(self.llm):
            found.append(
                f"{name}(is_chat_model=False) sends each judgement to /v1/completions as plain "
                "text, without the model's chat template and without log-probabilities: "
                "instruct models often answer something that is not a label there. If the "
                f"endpoint serves chat (llama.cpp, vLLM, Ollama and OpenAI do), pass "
                f"{name}(..., is_chat_model=True) to LLMReranker.from_llm."
            )
        if self._bound_field is None:
            found.append(
                f"{name} has no {', '.join(BOUND_FIELDS)} field that the reranker can set, so "
                "each judgement generates as many tokens as the LLM allows, where 1 to 8 are "
                f"needed. Limit {name}'s output to about 8 tokens in its own settings, or use "
                "an LLM class with max_tokens."
            )
        return found

    def __repr__(self) -> str:
        return f"LlamaIndexChatClient({type(self.llm).__name__}, model={self._identity[1]!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (and copied) as its LLM; the bounded copies and the lock are made again.
        return (_client_of, (self.llm,))

    def event_handlers(self) -> list[Any]:
        """The callback handlers that the LLM reports its calls to (its callback manager's)."""
        return list(getattr(getattr(self.llm, "callback_manager", None), "handlers", None) or ())

    def bounded_llm(self, max_tokens: int) -> Any:
        """The LLM to judge with when at most ``max_tokens`` may be generated: a copy of the
        user's LLM with its limit field set (the LLM itself when it has none).

        Example:
            >>> from llama_index.core.llms.mock import MockLLM
            >>> LlamaIndexChatClient(MockLLM(max_tokens=500)).bounded_llm(8).max_tokens
            8
        """
        name = self._bound_field
        if name is None:
            return self.llm
        fields = dict(self.llm.__dict__)
        with self._bounded_lock:
            held = self._bounded.get(max_tokens)
            if held is not None and held[0] == fields:
                return held[1]
        update: dict[str, Any] = {name: max_tokens}
        extra = fields.get("additional_kwargs")
        if openai_family(self.llm) and isinstance(extra, Mapping):
            update["additional_kwargs"] = {
                k: v for k, v in extra.items() if k not in _OPENAI_LIMIT_OPTIONS
            }
        # A shallow copy: it shares the LLM's callback manager and HTTP clients.
        copy = self.llm.model_copy(update=update)
        with self._bounded_lock:
            self._bounded[max_tokens] = (fields, copy)
        return copy

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
        llm = self.bounded_llm(max_tokens)
        options: dict[str, Any] = {}
        attempts = 0
        while True:
            attempts += 1
            if want:
                options.update(logprobs=True, top_logprobs=top_logprobs)
            else:
                options.pop("logprobs", None)
                options.pop("top_logprobs", None)
            try:
                response = await self._call(llm, chat, options, deadline, attempts)
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
        llm: Any,
        chat: list[ChatMessage],
        options: dict[str, Any],
        deadline: float | None,
        attempts: int,
    ) -> ChatResponse:
        name = type(self.llm).__name__
        try:
            if deadline is None:
                return await llm.achat(chat, **options)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChatClientError(f"{name}: the deadline passed", attempts=attempts - 1)
            return await asyncio.wait_for(llm.achat(chat, **options), timeout=left)
        except ChatClientError:
            raise
        except TimeoutError as exc:
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


def _client_of(llm: Any) -> LlamaIndexChatClient:
    """Unpickles a :class:`LlamaIndexChatClient` (warned about when it was made)."""
    return LlamaIndexChatClient(llm, warn=False)


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
