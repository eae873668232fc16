"""The per-call engine of :class:`~llamaindex_rerankers.llm.reranker.LLMReranker`: one rerank
call's judgements and its :class:`~llamaindex_rerankers.types.LLMUsage`, returned together.

The reranker reads its settings and live parts once, at the start of a call, into a
:class:`JudgeSetup`; :func:`judge` does the rest and returns ``(judgements, usage)``. The usage
is a record of the call's own, filled as the call goes and handed back; nothing is written on
the reranker or on a report passed in.

One instance serves many threads and tasks at once (a chatbot backend for weeks):

* **One limiter per instance.** Every call, sync or async, runs its requests on one background
  event loop (:mod:`llamaindex_rerankers.llm.loop`), so an instance has one semaphore, one chat
  client and one connection pool: ``concurrency`` bounds the requests in flight across *all*
  its concurrent calls. ``usage.max_in_flight`` is the peak of the call's own requests.
* **Identical passages** (after truncation) in one call are judged once; every copy gets the
  same judgement (``usage.deduplicated`` counts the repeats).
* **The cache** is read once per call and written once per call, in a worker thread off the
  event loop (one SQL statement / one transaction for :class:`SQLiteCache`). Its key holds the
  namespace (default ``"base_url|model"``), the prompt key, the query and the passage.

Failure policy (a node is never dropped):

* Endpoint without logprobs: the label is parsed from the answer text and the score is its
  value (``rerank_source="text"``). The process switches an endpoint to text mode only on clear
  evidence (:mod:`llamaindex_rerankers.llm.capabilities`), with a WARNING.
* Unparseable answer: one retry with a stricter instruction, then the label ``unknown``.
* Failed request (retries spent, deadline reached): the label ``unknown``; failures are counted
  in the usage and logged once per call.

Token counting: each request is a LlamaIndex ``CBEventType.LLM`` event on the reranker's
``callback_manager``, with the messages and a response whose ``raw["usage"]`` holds the
endpoint's own token counts (a failed request ends its event with the exception).

Example (what ``LLMReranker._judge`` does, on the background loop):
    >>> setup = reranker._setup()  # doctest: +SKIP
    >>> judgements, usage = await judge(setup, "prune apple trees", texts)  # doctest: +SKIP
    >>> report.llm = usage  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.prompts import BasePromptTemplate

from llamaindex_rerankers.http.loop import gather_all
from llamaindex_rerankers.llm.cache import (
    CachedJudgement,
    JudgementCache,
    cache_key,
    get_many,
    put_many,
)
from llamaindex_rerankers.llm.calibration import (
    CONTENT_FREE_PASSAGES,
    calibrate,
    content_free_prior,
)
from llamaindex_rerankers.llm.capabilities import logprobs_supported
from llamaindex_rerankers.llm.labels import (
    UNKNOWN,
    Label,
    expected_relevance,
    most_probable,
    parse_text_label,
    probs_from_tokens,
)
from llamaindex_rerankers.llm.llamaindex_client import LlamaIndexChatClient
from llamaindex_rerankers.llm.prompts import FewShotExample, render_messages
from llamaindex_rerankers.llm.tokens import TokenCounter
from llamaindex_rerankers.llm.types import ChatClient, ChatClientError, ChatResult
from llamaindex_rerankers.scoring import normalized_entropy
from llamaindex_rerankers.types import Judgement, LLMUsage
from llamaindex_rerankers.windows import Window, best_window, split_windows

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What one call has of an answer: its judgement, or why it has none; and whether it came
#: from the cache.
_Outcome = tuple[CachedJudgement | str, bool]


@dataclass(frozen=True)
class JudgeSetup:
    """What one call judges with, read from the reranker once at its start: an assignment or an
    ``update_prompts`` during the call does not mix two prompts (or two cache keys) in it.

    Attributes are the reranker's settings of the same name, plus its live parts: ``client``,
    ``cache`` (``None``: no cache), ``limiter`` (the instance's semaphore on the background
    loop), ``counter`` (token budgets), ``events`` (where the LLM events go; ``None`` when
    nobody listens or the client emits its own), ``labels_for`` (the labels of one query, whose
    codes may be drawn per query), ``namespace`` and ``prompt_key`` (of the cache keys) and
    ``owner`` (the reranker's class name, in log messages).
    """

    owner: str
    client: ChatClient
    cache: JudgementCache | None
    limiter: asyncio.Semaphore
    counter: TokenCounter
    events: CallbackManager | None
    templates: Mapping[str, BasePromptTemplate]
    labels_for: Callable[[str], tuple[Label, ...]]
    examples: tuple[FewShotExample, ...]
    namespace: str
    prompt_key: str
    concurrency: int
    deadline: float | None
    query_max_tokens: int | None
    passage_max_tokens: int | None
    long_text: str
    window_overlap: float
    use_logprobs: bool
    calibration: str
    max_tokens: int
    text_max_tokens: int
    top_logprobs: int
    sandwich: bool
    datamark: str | None
    show_progress: bool

    @property
    def calibrated(self) -> bool:
        """Whether content-free passages are judged with the real ones (a text answer has no
        label distribution, so text mode has no prior to divide out)."""
        return self.calibration == "content-free" and self.use_logprobs


@dataclass
class _Call:
    """The working state of one call, shared by its concurrent judgements (all on the
    background loop, so no lock is needed); its ``usage`` is what the call returns."""

    setup: JudgeSetup
    query: str
    labels: tuple[Label, ...]
    deadline: float | None
    usage: LLMUsage = field(default_factory=LLMUsage)
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0


async def judge(
    setup: JudgeSetup, query: str, texts: Sequence[str]
) -> tuple[list[Judgement], LLMUsage]:
    """Judge ``texts`` for ``query``: one judgement per text, in order, and the call's usage.

    With ``long_text="windows"`` every window of every passage is judged as a passage of its
    own (so that repeats are judged once and cached), and each passage gets its best window's
    judgement (MaxP, :func:`~llamaindex_rerankers.windows.best_window`).
    """
    budget = setup.passage_max_tokens
    if setup.long_text != "windows" or budget is None:
        return await judge_passages(setup, query, texts)
    spans = expand_windows(texts, setup.counter, budget, setup.window_overlap)
    judged, usage = await judge_passages(setup, query, [w.text for ws in spans for w in ws])
    split = {t: ws for t, ws in zip(texts, spans, strict=True) if len(ws) > 1}
    usage = dataclasses.replace(
        usage,
        deduplicated=len(texts) - len(set(texts)),
        windowed=len(split),
        windows=len({w.text for ws in split.values() for w in ws}),
    )
    return aggregate_windows(spans, judged), usage


async def judge_passages(
    setup: JudgeSetup, query: str, texts: Sequence[str]
) -> tuple[list[Judgement], LLMUsage]:
    """Judge each distinct passage once, at most ``concurrency`` requests in flight for the
    whole instance; read and write the cache once each."""
    started = time.monotonic()
    query_cut, query_truncated = setup.counter.truncate(query, setup.query_max_tokens)
    cuts = [setup.counter.truncate(text, setup.passage_max_tokens) for text in texts]
    passages = list(dict.fromkeys(passage for passage, _ in cuts))
    # Calibration's content-free passages are judged with the real ones (same prompt, same
    # query, same cache); they are not part of the result.
    free = []
    if setup.calibrated:
        seen = set(passages)
        free = [t for t in CONTENT_FREE_PASSAGES if t not in seen]
    call = _Call(
        setup,
        query=query_cut,
        labels=setup.labels_for(query_cut),
        deadline=None if setup.deadline is None else started + setup.deadline,
    )
    usage = call.usage
    usage.truncated = sum(cut for _, cut in cuts)
    usage.deduplicated = len(texts) - len(passages)
    usage.calibration_judgements = len(free)
    outcome = await _answers(call, passages + free)
    # Passages, not calibration's content-free ones (their failures are in ``failures``).
    usage.unknown = sum(not isinstance(outcome[p][0], CachedJudgement) for p in passages)
    prior = _prior(setup, outcome)
    judgements = [
        _judgement(outcome[passage], call.labels, cut or query_truncated, prior)
        for passage, cut in cuts
    ]
    if prior is None and setup.calibration != "none":
        usage.uncalibrated = sum(isinstance(outcome[p][0], CachedJudgement) for p, _ in cuts)
    usage.judgements = len(passages)
    usage.seconds = time.monotonic() - started
    _log_failures(call, len(passages) + len(free))
    return judgements, usage


def expand_windows(
    texts: Sequence[str], counter: TokenCounter, budget: int, overlap: float
) -> list[list[Window]]:
    """Each passage's windows within ``budget`` tokens (one window when it fits)."""
    found: dict[str, list[Window]] = {}
    for text in texts:
        if text not in found:
            found[text] = split_windows(text, budget, counter.count, overlap)
    return [found[text] for text in texts]


def aggregate_windows(
    spans: Sequence[Sequence[Window]], judged: Sequence[Judgement]
) -> list[Judgement]:
    """MaxP: per passage, the judgement of its best-scored window (its first window's when none
    could be judged), with ``rerank_windows`` and ``rerank_best_window_offset`` added.
    ``judged`` holds the windows' judgements, passage after passage."""
    out: list[Judgement] = []
    start = 0
    for windows in spans:
        own = judged[start : start + len(windows)]
        start += len(windows)
        best, where = best_window(windows, [j.score for j in own])
        out.append(dataclasses.replace(own[best], metadata={**own[best].metadata, **where}))
    return out


def event_manager(manager: CallbackManager | None, client: ChatClient) -> CallbackManager | None:
    """Where the LLM events of a call go: ``manager``, unless nobody listens or the client is a
    LlamaIndex LLM that already reports to the same handlers (counted once, not twice)."""
    handlers = list(getattr(manager, "handlers", None) or ())
    if not handlers:
        return None
    if isinstance(client, LlamaIndexChatClient):
        own = client.event_handlers()
        if any(h is o for h in handlers for o in own):
            return None
    return manager


async def _answers(call: _Call, asked: Sequence[str]) -> dict[str, _Outcome]:
    """Every asked passage's outcome: from the cache, else judged (and then cached)."""
    setup = call.setup
    keys = [cache_key(setup.namespace, setup.prompt_key, call.query, p) for p in asked]
    found = await _read_cache(setup, keys)
    call.usage.cache_hits = len(found)
    missing = [i for i, key in enumerate(keys) if key not in found]
    bar = _progress(len(asked), setup.show_progress)
    try:
        if bar is not None:
            bar.update(len(found))
        answers = await gather_all([_judge_one(call, asked[i], bar) for i in missing])
    finally:
        if bar is not None:
            bar.close()
    fresh = {keys[i]: a for i, a in zip(missing, answers, strict=True)
             if isinstance(a, CachedJudgement)}  # fmt: skip
    await _write_cache(setup, fresh)
    outcome: dict[str, _Outcome] = {
        asked[i]: (found[key], True) for i, key in enumerate(keys) if key in found
    }
    outcome.update((asked[i], (a, False)) for i, a in zip(missing, answers, strict=True))
    return outcome


def _prior(setup: JudgeSetup, outcome: Mapping[str, _Outcome]) -> dict[str, float] | None:
    """The content-free prior of the call, ``None`` without calibration or usable answers."""
    if not setup.calibrated:
        return None
    return content_free_prior([
        value.probs
        for value, _ in (outcome[t] for t in CONTENT_FREE_PASSAGES)
        if isinstance(value, CachedJudgement) and value.source == "logprobs"
    ])  # fmt: skip


def _judgement(
    outcome: _Outcome,
    labels: Sequence[Label],
    truncated: bool,
    prior: Mapping[str, float] | None,
) -> Judgement:
    value, hit = outcome
    if isinstance(value, CachedJudgement):
        return _scored(value, labels, truncated, cached_hit=hit, prior=prior)
    return _unknown(truncated, value)


def _log_failures(call: _Call, asked: int) -> None:
    owner, usage = call.setup.owner, call.usage
    if call.errors:
        logger.warning(
            "%s: %d of %d judgements failed and were labelled %r (kept after the judged "
            "nodes); last error: %s",
            owner, len(call.errors), asked, UNKNOWN, call.errors[-1],
        )  # fmt: skip
    if usage.parse_failures:
        logger.info(
            "%s: %d answers could not be parsed (%d passages labelled %r)",
            owner, usage.parse_failures, usage.unknown, UNKNOWN,
        )  # fmt: skip


async def _read_cache(setup: JudgeSetup, keys: Sequence[str]) -> dict[str, CachedJudgement]:
    if setup.cache is None or not keys:
        return {}
    try:
        return await asyncio.to_thread(get_many, setup.cache, keys)
    except Exception as exc:  # a broken cache must not take the reranker down with it
        logger.warning("%s: the judgement cache could not be read (%r); judging without it",
                       setup.owner, exc)  # fmt: skip
        return {}


async def _write_cache(setup: JudgeSetup, items: Mapping[str, CachedJudgement]) -> None:
    if setup.cache is None or not items:
        return
    try:
        await asyncio.to_thread(put_many, setup.cache, items)
    except Exception as exc:
        logger.warning("%s: %d judgements could not be written to the cache (%r)",
                       setup.owner, len(items), exc)  # fmt: skip


async def _judge_one(call: _Call, passage: str, bar: Any) -> CachedJudgement | str:
    """One passage: its judgement, or why it has none."""
    setup = call.setup
    try:
        if not await _acquire(setup.limiter, call.deadline):
            why = (
                f"the deadline passed while waiting for one of the {setup.concurrency} "
                "request slots (concurrency) that this reranker's calls share"
            )
            call.usage.failures += 1
            call.errors.append(why)
            return why
        try:
            call.in_flight += 1
            call.usage.max_in_flight = max(call.usage.max_in_flight, call.in_flight)
            result = await _ask(call, passage)
        except _Failed as exc:
            return str(exc)
        finally:
            call.in_flight -= 1
            setup.limiter.release()
        return "unparseable answer" if result is None else result
    finally:
        if bar is not None:
            bar.update(1)


async def _ask(call: _Call, passage: str) -> CachedJudgement | None:
    """One judgement: the first answer, and a stricter retry if it cannot be read.

    Returns ``None`` when neither answer gives a label; raises :class:`_Failed` when a request
    fails for good.
    """
    setup = call.setup
    for retry in (False, True):
        messages = render_messages(
            setup.templates, call.query, passage, call.labels, retry=retry,
            examples=setup.examples, sandwich=setup.sandwich, datamark_with=setup.datamark,
        )  # fmt: skip
        parsed = _read(await _chat(call, messages), call.labels)
        if parsed is not None:
            return parsed
        call.usage.parse_failures += 1
    return None


async def _chat(call: _Call, messages: list[dict[str, str]]) -> ChatResult:
    setup = call.setup
    want = setup.use_logprobs and logprobs_supported(setup.client.identity) is not False
    result = await _request(call, messages, logprobs=want)
    if (
        want
        and result.tokens is None
        and setup.max_tokens < setup.text_max_tokens
        and parse_text_label(result.text, call.labels) is None
    ):
        # The answer came without logprobs and a one-token answer may be cut short: ask again
        # in text mode.
        result = await _request(call, messages, logprobs=False)
    return result


async def _request(call: _Call, messages: list[dict[str, str]], *, logprobs: bool) -> ChatResult:
    setup, usage = call.setup, call.usage
    max_tokens = setup.max_tokens if logprobs else setup.text_max_tokens
    event = _LLMEvent(setup, messages, max_tokens, logprobs)
    try:
        result = await setup.client.achat(
            messages,
            max_tokens=max_tokens,
            logprobs=logprobs,
            top_logprobs=setup.top_logprobs,
            deadline=call.deadline,
        )
    except ChatClientError as exc:
        event.failed(exc)
        attempts = max(int(getattr(exc, "attempts", 1) or 0), 0)
        usage.calls += attempts
        usage.retries += max(attempts - 1, 0)
        usage.failures += 1
        call.errors.append(str(exc))
        raise _Failed(str(exc)) from exc
    event.answered(result)
    usage.calls += result.attempts
    usage.retries += max(result.attempts - 1, 0)
    usage.prompt_tokens += result.prompt_tokens
    usage.completion_tokens += result.completion_tokens
    if result.prompt_tokens_evaluated is not None:  # the server said what its cache saved
        usage.prompt_cache_reports += 1
        usage.prompt_tokens_evaluated += result.prompt_tokens_evaluated
        usage.prompt_tokens_cached += result.prompt_tokens_cached or 0
    return result


def _read(result: ChatResult, labels: Sequence[Label]) -> CachedJudgement | None:
    """The label probabilities an answer gives: from the logprobs, else the parsed text."""
    if result.tokens is not None:
        probs = probs_from_tokens(result.tokens, labels)
        if probs is not None:
            return CachedJudgement(probs, "logprobs")
    label = parse_text_label(result.text, labels)
    if label is None:
        return None
    return CachedJudgement({lab.name: float(lab is label) for lab in labels}, "text")


def _scored(
    judged: CachedJudgement,
    labels: Sequence[Label],
    truncated: bool,
    *,
    cached_hit: bool,
    prior: Mapping[str, float] | None = None,
) -> Judgement:
    """A cached answer as a judgement: calibrated by ``prior`` when there is one (log-probability
    answers only: a text answer has no distribution to calibrate), its uncertainty the
    normalised entropy of the distribution scored (None for a text answer: one label is not a
    measure of confidence)."""
    names = {lab.name for lab in labels}
    raw = {k: float(v) for k, v in judged.probs.items() if k in names}
    logprobs = judged.source == "logprobs"
    probs = calibrate(raw, prior) if prior is not None and logprobs else raw
    metadata: dict[str, Any] = {
        "rerank_label": most_probable(probs, labels),
        "rerank_label_probs": probs,
        "rerank_source": judged.source,
        "rerank_truncated": truncated,
        "rerank_cached": cached_hit,
    }
    if probs is not raw:
        metadata["rerank_raw_label_probs"] = raw
    full = {lab.name: probs.get(lab.name, 0.0) for lab in labels}
    return Judgement(
        score=expected_relevance(probs, labels),
        metadata=metadata,
        uncertainty=normalized_entropy(full) if logprobs else None,
    )


def _unknown(truncated: bool, why: str) -> Judgement:
    return Judgement(
        score=None,
        metadata={
            "rerank_label": UNKNOWN,
            "rerank_label_probs": {},
            "rerank_source": UNKNOWN,
            "rerank_truncated": truncated,
            "rerank_cached": False,
            "rerank_error": why,
        },
    )


class _LLMEvent:
    """One request as a LlamaIndex ``CBEventType.LLM`` event, with the payloads that
    ``TokenCountingHandler`` and other handlers read: the messages, then the response whose
    ``raw["usage"]`` holds the endpoint's own token counts (or the exception). Started when
    made; nothing when the call has no callback manager to tell."""

    def __init__(
        self,
        setup: JudgeSetup,
        messages: Sequence[Mapping[str, str]],
        max_tokens: int,
        logprobs: bool,
    ) -> None:
        self._manager = setup.events
        self._id = ""
        if self._manager is None:
            return
        self._chat = [
            ChatMessage(role=MessageRole(m["role"]), content=m["content"]) for m in messages
        ]
        options: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
        if logprobs:
            options.update(logprobs=True, top_logprobs=setup.top_logprobs)
        base_url, model = setup.client.identity
        self._id = self._manager.on_event_start(
            CBEventType.LLM,
            payload={
                EventPayload.MESSAGES: self._chat,
                EventPayload.ADDITIONAL_KWARGS: options,
                EventPayload.SERIALIZED: {
                    "class_name": type(setup.client).__name__,
                    "model": model,
                    "api_base": base_url,
                },
            },
        )

    def answered(self, result: ChatResult) -> None:
        if self._manager is None:
            return
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        response = ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
            raw={"usage": usage},
            additional_kwargs=dict(usage),
        )
        self._manager.on_event_end(
            CBEventType.LLM,
            payload={EventPayload.MESSAGES: self._chat, EventPayload.RESPONSE: response},
            event_id=self._id,
        )

    def failed(self, exc: BaseException) -> None:
        if self._manager is not None:
            self._manager.on_event_end(
                CBEventType.LLM, payload={EventPayload.EXCEPTION: exc}, event_id=self._id
            )


class _Failed(Exception):
    """A chat request failed for good (already counted and logged)."""


async def _acquire(limiter: asyncio.Semaphore, deadline: float | None) -> bool:
    """Take a request slot; False when the deadline passes first (or has already passed: a
    free slot is not taken after the deadline)."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        return False
    try:
        async with asyncio.timeout(left):
            await limiter.acquire()
    except TimeoutError:
        return False
    return True


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="LLM rerank", unit="passage", leave=False)
