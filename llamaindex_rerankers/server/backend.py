"""What the routes share: the index, one reranker, the answer LLM, the limits and the sessions.

One :class:`Backend` per app. Blocking work (query embedding, Chroma, cross-encoder inference)
runs in a bounded thread pool, never on the event loop; LLM judging is async and bounded by the
LLM reranker's own instance-wide limit (``--llm-concurrency``). Every call returns its own
report: nothing about a request is kept on the backend or the reranker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import httpx
from llama_index.core.schema import NodeWithScore, TextNode

from llamaindex_rerankers._errors import one_line
from llamaindex_rerankers.base import BaseReranker, _new_node
from llamaindex_rerankers.batch_hooks import CallCancelled, batch_hook
from llamaindex_rerankers.endpoints.endpoint import LLMEndpoint
from llamaindex_rerankers.pipeline.query import relevant_enough
from llamaindex_rerankers.server.admission import Job, WorkGate
from llamaindex_rerankers.server.limits import AdmissionGate
from llamaindex_rerankers.server.metrics import Metrics
from llamaindex_rerankers.server.sessions import open_session_store
from llamaindex_rerankers.server.settings import ServerSettings
from llamaindex_rerankers.server.sources import suspected
from llamaindex_rerankers.types import RerankReport, RerankResult

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import LLM

logger = logging.getLogger(__name__)

#: Seconds a readiness probe waits for Chroma or the LLM endpoint.
_PROBE_TIMEOUT = 3.0


class NotReady(Exception):
    """The backend has not finished loading, or loading failed (the message says why)."""


class IndexUnavailable(Exception):
    """The vector store did not answer a query (a Chroma server down, a broken folder)."""


@dataclass
class Search:
    """One query's retrieval and reranking.

    Attributes:
        query: the query.
        retrieved: first-stage nodes, in retrieval order.
        nodes: the reranked nodes kept (``top_n``), best first.
        report: the reranker's report of this call (a placeholder without a reranker).
        retrieve_seconds: query embedding and the vector search.
        rerank_seconds: the rerank call.
        abstained: nothing reached the relevance threshold (or nothing was retrieved).
        failed: the reranker could not judge anything (an outage, not an abstention).
    """

    query: str
    retrieved: list[NodeWithScore]
    nodes: list[NodeWithScore]
    report: RerankReport
    retrieve_seconds: float
    rerank_seconds: float
    abstained: bool
    failed: bool

    @property
    def status(self) -> str:
        return "reranker_failed" if self.failed else "abstained" if self.abstained else "ok"


class Backend:
    """The shared state of one server.

    Args:
        settings: the server's settings.
        reranker: use this reranker instead of building ``settings.reranker`` (``None`` with
            ``settings.reranker == "none"`` keeps the retrieval order).
        index: use this index instead of opening the configured Chroma collection.
        endpoint: the OpenAI-compatible endpoint for answers (and the LLM rerankers); ``None``
            builds one from the settings' ``llm_*`` fields.
        answer_llm: use this LlamaIndex LLM for answers instead of ``endpoint``'s.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        reranker: BaseReranker | None = None,
        index: VectorStoreIndex | None = None,
        endpoint: LLMEndpoint | None = None,
        answer_llm: LLM | None = None,
    ) -> None:
        self.settings = settings
        self.reranker = reranker
        self.index = index
        self.endpoint = endpoint or (
            LLMEndpoint(settings.llm_base_url, settings.llm_model, settings.llm_api_key)
            if settings.llm_base_url
            else None
        )
        self.answer_llm = answer_llm
        #: Whether requests are reranked (``False`` for ``--reranker none``).
        self.reranks = reranker is not None or settings.reranker != "none"
        self.metrics = Metrics()
        self.search_gate = WorkGate(
            "search",
            limit=settings.max_concurrent,
            queue=settings.max_queue,
            max_wait=settings.max_queue_wait,
            slots=settings.pool_threads,
        )
        self.chat_gate = AdmissionGate(
            "chat", limit=settings.max_chats, queue=settings.max_chat_queue
        )
        self.metrics.watch_gate(self.search_gate)
        self.metrics.watch_gate(self.chat_gate)
        self.sessions = open_session_store(
            settings.session_store,
            max_sessions=settings.max_sessions,
            ttl=settings.session_ttl,
            max_messages=settings.max_session_messages,
        )
        self.metrics.watch_sessions(lambda: len(self.sessions))
        # A thread for every running search and chat: they wait for their batch turns (at most
        # pool_threads computing), not for a thread behind a large request.
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_concurrent + settings.max_chats + settings.pool_threads,
            thread_name_prefix="llamaindex-rerankers-serve",
        )
        self._load_lock = threading.Lock()
        self._loaded = False
        self._load_error: BaseException | None = None
        self._load_task: asyncio.Future[None] | None = None

    # -- loading ----------------------------------------------------------------------------

    @property
    def reranker_name(self) -> str:
        """The reranker's model name as clients see it (``none`` without one): local model
        files by their file name, never by the server's paths."""
        if self.reranker is None:
            return "none"
        return public_model_name(self.reranker.model_name)

    def load(self) -> None:
        """Load the models and open the index (blocking, idempotent, thread-safe).

        Raises:
            ModelLoadError, ValueError, ConnectionError: a model or the index is missing; the
                message says which option to set.
        """
        try:
            self.load_reranker()
            with self._load_lock:
                if not self._loaded:
                    self._load()
                    self._loaded = True
        except BaseException as exc:
            self._load_error = exc
            raise
        self._load_error = None

    def load_reranker(self) -> None:
        """Build the reranker and load its model (blocking; part of :meth:`load`)."""
        with self._load_lock:
            if self.reranker is None and self.settings.reranker != "none":
                self.reranker = _build_reranker(self.settings, self.endpoint)
            for stage in (self.reranker, getattr(self.reranker, "first", None)):
                load = getattr(stage, "load", None)  # the cross-encoder, a cascade's first stage
                if callable(load):
                    model = load()
                    # What a pair is cut to bounds the admission's estimate of its cost.
                    limit = getattr(model, "max_seq_length", None) or getattr(
                        model, "max_length", None
                    )
                    if isinstance(limit, int) and limit > 0:
                        self.search_gate.pair_tokens = limit

    def _load(self) -> None:
        s = self.settings
        if self.index is None:
            from llamaindex_rerankers.pipeline import (
                DEFAULT_COLLECTION,
                ChromaConfig,
                load_index,
                make_embed_model,
            )

            config = ChromaConfig(
                persist_dir=s.persist_dir,
                collection=s.collection or DEFAULT_COLLECTION,
                host=s.chroma_host,
                port=s.chroma_port,
            )
            self.index = load_index(config, embed_model=make_embed_model(s.embed_model))
        if self.answer_llm is None and s.answers and self.endpoint is not None:
            overrides: dict[str, Any] = {
                "max_tokens": s.answer_max_tokens,
                # Not --llm-timeout: a chat turn's LLM calls (condensing, the answer, streamed
                # or not) get what is left of its --chat-timeout, enforced by cancelling them
                # (routes.chat, chat._deltas); the HTTP timeout only needs to stay out of the way.
                "timeout": s.chat_timeout,
                "max_retries": s.llm_max_retries,
            }
            if s.llm_context_window:
                overrides["context_window"] = s.llm_context_window
            self.answer_llm = self.endpoint.as_llama_index_llm(**overrides)

    async def start(self) -> None:
        """Begin loading in a worker thread (once); requests wait for it in :meth:`ready`."""
        if self._load_task is None:
            self._load_task = asyncio.ensure_future(asyncio.to_thread(self.load))
            # A failed load is reported by ready() and /readyz; keep asyncio from logging it.
            self._load_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def ready(self) -> None:
        """Return once loaded.

        Raises:
            NotReady: loading failed or is still under way.
        """
        if self._loaded:
            return
        await self.start()
        assert self._load_task is not None
        try:
            await asyncio.shield(self._load_task)
        except Exception as exc:
            raise NotReady(f"the server could not load: {one_line(exc)}") from exc

    def close(self) -> None:
        """Stop: requests still computing stop at their next batch, queued work never starts."""
        self.search_gate.cancel_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the pipeline -----------------------------------------------------------------------

    async def run_blocking(self, fn: Any, *args: Any, job: Job | None = None) -> Any:
        """Run a blocking call in the pool; with ``job``, as that request's work (its batches
        take turns, it stops when the job is cancelled, the job holds its slot until done)."""
        if job is not None:
            return await job.run(self._pool, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def admit_retrieve(self, top_k: int) -> Job:
        """Admit a retrieval of ``top_k`` candidates (and their rerank) by the wait it would
        face (``/v1/retrieve`` and a chat's retrieval); release with ``job.finish()``.

        Raises:
            Refused: its estimated wait exceeds ``--max-queue-wait`` (503 with Retry-After).
        """
        gate = self.search_gate
        return gate.admit("retrieve", gate.estimate_retrieve(top_k, reranks=self.reranks), top_k)

    async def search(self, query: str, *, top_k: int, top_n: int, job: Job | None = None) -> Search:
        """Retrieve ``top_k`` candidates and rerank them; keep the best ``top_n`` (``job``: the
        admitted request this is, see :meth:`run_blocking`)."""
        await self.ready()
        assert self.index is not None
        index = self.index
        started = time.perf_counter()

        def retrieve() -> list[NodeWithScore]:
            return index.as_retriever(similarity_top_k=top_k).retrieve(query)

        try:
            retrieved: list[NodeWithScore] = await self.run_blocking(
                retrieve if job is None else lambda: job.turn(retrieve), job=job
            )
        except CallCancelled:
            raise
        except Exception as exc:
            logger.warning("retrieval failed: %s: %s", type(exc).__name__, one_line(exc))
            raise IndexUnavailable(
                f"the index did not answer ({type(exc).__name__}); retry later"
            ) from exc
        retrieve_seconds = time.perf_counter() - started
        self.metrics.stage.labels("retrieve").observe(retrieve_seconds)
        result = await self.rerank(retrieved, query, job=job)
        rerank_seconds = time.perf_counter() - started - retrieve_seconds
        return self._search(query, retrieved, result, top_n, retrieve_seconds, rerank_seconds)

    async def rerank(
        self, nodes: Sequence[NodeWithScore], query: str, *, job: Job | None = None
    ) -> RerankResult:
        """Rerank ``nodes`` (all of them, best first) with the shared reranker.

        A reranker that judges synchronously (the cross-encoder) runs in the backend's pool (its
        batches taking turns, see :class:`~llamaindex_rerankers.server.admission.WorkGate`); one
        with its own async judging (LLM, cascade) is awaited, its LLM requests bounded by its
        instance-wide limit.
        """
        await self.ready()
        reranker = self.reranker
        if reranker is None:
            report = RerankReport(query=query, n_candidates=len(nodes), n_returned=len(nodes))
            return RerankResult([_with_ranks(n, i) for i, n in enumerate(nodes, 1)], report)
        if _judges_in_a_thread(reranker):
            result: RerankResult = await self.run_blocking(
                reranker.rerank, list(nodes), query, job=job
            )
        else:
            # Its worker threads copy this context: a cascade's cross-encoder takes turns too.
            with batch_hook(job):
                result = await reranker.arerank(list(nodes), query)
        self.metrics.observe_report(result.report)
        flagged = sum(suspected(n) for n in result.nodes)
        if flagged:
            self.metrics.injection_suspected.inc(flagged)
        return result

    async def rerank_texts(
        self, query: str, texts: Sequence[str], *, job: Job | None = None
    ) -> RerankResult:
        """Rerank plain texts (``/v1/rerank``); each output node's ``ref_doc_index`` metadata is
        the text's position in ``texts``."""
        # The position is bookkeeping, not text to score: kept out of the pair the reranker
        # reads (metadata_mode EMBED/LLM would otherwise prepend "ref_doc_index: i").
        keys = ["ref_doc_index"]
        nodes = [
            NodeWithScore(
                node=TextNode(
                    text=t,
                    id_=f"doc-{i}",
                    metadata={"ref_doc_index": i},
                    excluded_embed_metadata_keys=keys,
                    excluded_llm_metadata_keys=keys,
                )
            )
            for i, t in enumerate(texts)
        ]
        return await self.rerank(nodes, query, job=job)

    def _search(
        self,
        query: str,
        retrieved: list[NodeWithScore],
        result: RerankResult,
        top_n: int,
        retrieve_seconds: float,
        rerank_seconds: float,
    ) -> Search:
        report = result.report
        kept = result.nodes[:top_n]
        report.n_returned = len(kept)  # the reranker returned all; this request keeps top_n
        failed = report.failed
        threshold = self.settings.abstain_below
        judged = self.reranker is not None
        abstained = not failed and (
            not retrieved
            or (judged and threshold > 0 and not relevant_enough(result.nodes, threshold))
        )
        search = Search(
            query, retrieved, kept, report, retrieve_seconds, rerank_seconds, abstained, failed
        )
        self.metrics.outcomes.labels(search.status).inc()
        return search

    # -- readiness --------------------------------------------------------------------------

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Checks for ``/readyz``: models loaded, Chroma answering, the LLM endpoint answering
        (only when one is configured)."""
        checks: dict[str, dict[str, Any]] = {}
        if self._loaded:
            checks["models"] = {"ok": True, "detail": f"reranker {self.reranker_name} loaded"}
        elif self._load_error is not None:
            checks["models"] = {"ok": False, "detail": one_line(self._load_error)}
        else:
            checks["models"] = {"ok": False, "detail": "loading"}
        if self.index is not None:
            checks["chroma"] = await self._probe(asyncio.to_thread(self._chroma_probe))
        elif self._loaded:
            checks["chroma"] = {"ok": False, "detail": "no index"}
        if self.endpoint is not None and self.endpoint.base_url:
            checks["llm"] = await self._probe(self._llm_probe())
        return checks

    async def _probe(self, check: Any) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(check, _PROBE_TIMEOUT + 1)
            return {"ok": True, "detail": detail}
        except Exception as exc:
            return {"ok": False, "detail": one_line(exc)}

    def _chroma_probe(self) -> str:
        assert self.index is not None
        # ChromaVectorStore.client is the chromadb collection; count() is a real round trip.
        count = self.index.vector_store.client.count()
        return f"collection answers ({count} chunks)"

    async def _llm_probe(self) -> str:
        assert self.endpoint is not None and self.endpoint.base_url
        url = self.endpoint.base_url.rstrip("/") + "/models"
        key = self.endpoint.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT) as client:
                response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"GET {url}: {one_line(exc)}") from None
        if response.is_error:
            raise ConnectionError(f"GET {url}: HTTP {response.status_code}")
        return f"GET {url}: {response.status_code}"


def _judges_in_a_thread(reranker: BaseReranker) -> bool:
    """Whether the reranker's judging is blocking work (the cross-encoder, whose own async
    path is a thread pool too): it runs in the backend's pool, as its request's job, so that
    its batches take turns with other requests' and it stops when cancelled. Rerankers with
    their own async judging (LLM, cascade) are awaited instead."""
    from llamaindex_rerankers.cross_encoder import CrossEncoderReranker

    return isinstance(reranker, CrossEncoderReranker) or (
        type(reranker)._ajudge is BaseReranker._ajudge
    )


def _build_reranker(settings: ServerSettings, endpoint: LLMEndpoint | None) -> BaseReranker:
    from llamaindex_rerankers.registry import make_reranker, needs_llm, reranker_options

    name = settings.reranker
    if needs_llm(name) and endpoint is None:
        raise ValueError(
            f"the {name} reranker needs an LLM endpoint: pass --llm-base-url URL (or set "
            "OPENAI_API_KEY, or a GGUF for the local server)"
        )
    # The same mapping as the CLI's: --cross-encoder-model and the endpoint, per reranker.
    options = reranker_options(
        name,
        cross_encoder_model=settings.cross_encoder_model,
        endpoint=endpoint,
        remote_url=settings.remote_url,
        remote_api=settings.remote_api,
        remote_model=settings.remote_model,
    )
    if name != "none":
        # The cascade's goes to its LLM stage: the sources it keeps are that stage's survivors.
        options["detect_injection"] = settings.detect_injection
    if needs_llm(name):
        options.update(
            timeout=settings.llm_timeout,
            max_retries=settings.llm_max_retries,
            concurrency=settings.llm_concurrency,
            cache=None if settings.llm_cache == "none" else settings.llm_cache,
        )
    reranker = make_reranker(name, top_n=None, **options)
    if not isinstance(reranker, BaseReranker):
        raise ValueError(f"the server needs one of this package's rerankers, got {name!r}")
    return reranker


def public_model_name(name: str) -> str:
    """A model name fit for responses: hub ids unchanged, local paths cut to their last part
    (a cascade's ``"first -> second"`` part by part).

    Example:
        >>> public_model_name("/srv/models/minilm-l6-ce -> /srv/llm/SmolLM2.gguf")
        'minilm-l6-ce -> SmolLM2.gguf'
        >>> public_model_name("cross-encoder/ms-marco-MiniLM-L-6-v2")
        'cross-encoder/ms-marco-MiniLM-L-6-v2'
    """
    parts = []
    for part in name.split(" -> "):
        local = part.startswith(("/", ".", "~")) or part.count("/") > 1 or "\\" in part
        parts.append(PurePath(part).name if local else part)
    return " -> ".join(parts)


def _with_ranks(node: NodeWithScore, rank: int) -> NodeWithScore:
    """A copy of a retrieved node carrying its retrieval rank and score, as the rerankers'
    output does (for ``--reranker none``)."""
    # The rerankers' own copy (bookkeeping keys kept out of the LLM's and embedder's text),
    # unjudged; the node keeps its retrieval score as its score.
    copy = _new_node(node, None, None, rank, {}, fused=False)
    return NodeWithScore(node=copy.node, score=node.score)
