"""Querying an index: open it, retrieve and rerank, and query engines that may abstain.

Example:
    >>> from llamaindex_rerankers import CrossEncoderReranker
    >>> from llamaindex_rerankers.pipeline import ChromaConfig, build_query_engine, load_index
    >>> index = load_index(ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
    >>> engine = build_query_engine(index, reranker=CrossEncoderReranker(top_n=5))  # doctest: +SKIP
    >>> engine.query("best practices for pruning apple trees").source_nodes  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle

from llamaindex_rerankers.base import (
    NO_TEXT,
    RERANK_ERROR,
    RERANK_MODEL_SCORE,
    RERANK_SCORE,
    BaseReranker,
)
from llamaindex_rerankers.pipeline.chroma import (
    ChromaConfig,
    _check_collection_model,
    _open_collection,
    _vector_store,
)
from llamaindex_rerankers.pipeline.embeddings import _embed_model_name, make_embed_model
from llamaindex_rerankers.types import RerankReport

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

#: What :func:`build_query_engine` answers when it abstains.
NO_RELEVANT_CONTEXT = "No relevant context found."
#: What an abstaining engine answers when the reranker could judge no source (an outage, e.g.
#: the LLM endpoint is down): not "no relevant context", which would blame the documents.
RERANK_FAILED_MESSAGE = (
    "The reranker could not judge any source (is the LLM endpoint reachable?); no answer was "
    "generated."
)


@dataclass(frozen=True)
class RetrievalResult:
    """First-stage results and their reranked order for one query.

    Attributes:
        query: the query string.
        retrieved: nodes in first-stage (vector similarity) order.
        reranked: nodes after the reranker (a copy of ``retrieved`` when there is no reranker).
        report: the rerank call's own report (one of this package's rerankers), else ``None``.

    Example:
        >>> RetrievalResult(query="q", retrieved=[], reranked=[]).reranked
        []
    """

    query: str
    retrieved: list[NodeWithScore]
    reranked: list[NodeWithScore]
    report: RerankReport | None = None


def load_index(
    config: ChromaConfig, *, embed_model: BaseEmbedding | None = None, create: bool = False
) -> VectorStoreIndex:
    """Open a Chroma collection as a LlamaIndex ``VectorStoreIndex``.

    Args:
        config: where the index lives.
        embed_model: the model that embeds queries; use the one the index was built with.
            ``None`` uses :func:`make_embed_model`.
        create: create an empty collection when there is none (instead of raising).

    Returns:
        The index; its retrievers and query engines embed queries with ``embed_model``.

    Raises:
        ValueError: there is no such collection (and ``create`` is False).

    Example:
        >>> index = load_index(ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
        >>> index.as_retriever(similarity_top_k=5).retrieve("pruning")  # doctest: +SKIP
    """
    from llama_index.core import VectorStoreIndex

    if create:
        embed = embed_model if embed_model is not None else make_embed_model()
        collection = _open_collection(config, embed_model_name=_embed_model_name(embed))
    else:  # a missing index is reported before the model loads
        collection = _open_collection(config, create=False)
        embed = embed_model if embed_model is not None else make_embed_model()
    _check_collection_model(collection, embed)
    return VectorStoreIndex.from_vector_store(_vector_store(collection), embed_model=embed)


def retrieve_and_rerank(
    index: VectorStoreIndex,
    query: str,
    *,
    top_k: int = 20,
    reranker: BaseNodePostprocessor | None = None,
) -> RetrievalResult:
    """Retrieve the ``top_k`` nearest chunks, then rerank them.

    Args:
        index: the index (see :func:`load_index`).
        query: the question.
        top_k: number of first-stage candidates.
        reranker: any node postprocessor; ``None`` keeps the first-stage order.

    Returns:
        Both orders, so they can be compared.

    Example:
        >>> result = retrieve_and_rerank(index, "pruning apple trees",  # doctest: +SKIP
        ...                              reranker=CrossEncoderReranker(top_n=3))
        >>> result.reranked[0].node.metadata["retrieval_rank"]  # doctest: +SKIP
        2
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("retrieve_and_rerank needs a non-empty query string.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    retrieved = index.as_retriever(similarity_top_k=top_k).retrieve(query)
    report = None
    if reranker is None:
        reranked = list(retrieved)
    elif isinstance(reranker, BaseReranker):
        reranked, report = reranker.rerank(retrieved, query)
    else:
        reranked = reranker.postprocess_nodes(list(retrieved), query_str=query)
    return RetrievalResult(
        query=query, retrieved=list(retrieved), reranked=list(reranked), report=report
    )


def build_query_engine(
    index: VectorStoreIndex,
    *,
    reranker: BaseNodePostprocessor | None = None,
    top_k: int = 20,
    llm: LLM | None = None,
    abstain_below: float | None = None,
    abstain_message: str = NO_RELEVANT_CONTEXT,
    rerank_failed_message: str = RERANK_FAILED_MESSAGE,
    **kwargs: Any,
) -> RetrieverQueryEngine:
    """Query engine: retriever top ``top_k`` -> reranker (its own ``top_n``) -> synthesizer.

    With ``abstain_below`` set, a query whose reranked sources all score below it (by the
    reranker's own score, ``rerank_model_score`` when fused, else ``rerank_score``) is answered
    with ``abstain_message`` instead of sending junk to the synthesizer: the LLM is not called,
    ``response.metadata["abstained"]`` is True and the sources are still returned. For the LLM
    reranker, pass the value of the weakest label that counts (``likely`` = 0.5 by default).
    When the reranker could judge no source at all (every ``rerank_score`` is ``None``, e.g. the
    LLM endpoint is down), that is not an abstention: the answer is ``rerank_failed_message``,
    ``response.metadata == {"abstained": False, "rerank_failed": True}``, the LLM is not called
    and the sources are still returned.

    With ``llm=None`` the engine never calls an LLM (and never falls back to LlamaIndex's default
    OpenAI one): it uses ``response_mode="no_text"``, so ``response.source_nodes`` holds the
    reranked sources and ``response.response`` is empty. This works offline.

    Args:
        index: the index (see :func:`load_index`).
        reranker: any node postprocessor; ``None`` keeps the first-stage order.
        top_k: number of first-stage candidates.
        llm: the LLM that writes the answer; ``None`` returns sources only.
        abstain_below: minimum rerank score one source must reach; ``None`` (default) never
            abstains.
        abstain_message: the answer given when abstaining.
        rerank_failed_message: the answer given when the reranker judged no source (only with
            ``abstain_below`` set).
        **kwargs: passed to ``llama_index.core.get_response_synthesizer`` (``response_mode``,
            ``text_qa_template``, ``streaming``, ...).

    Returns:
        A ``RetrieverQueryEngine``.

    Raises:
        ValueError: a ``response_mode`` that writes text was asked for without an ``llm``.

    Example:
        >>> reranker = CrossEncoderReranker(top_n=5)
        >>> engine = build_query_engine(index, reranker=reranker)  # doctest: +SKIP
        >>> response = engine.query("pruning apple trees")  # doctest: +SKIP
        >>> [s.node.metadata["rerank_score"] for s in response.source_nodes]  # doctest: +SKIP
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    if abstain_below is not None and not 0.0 <= abstain_below <= 1.0:
        raise ValueError(f"abstain_below must be in [0, 1] (a rerank score), got {abstain_below}.")
    synthesizer = _synthesizer(llm, kwargs)
    parts: dict[str, Any] = {
        "retriever": index.as_retriever(similarity_top_k=top_k),
        "response_synthesizer": synthesizer,
        "node_postprocessors": [reranker] if reranker is not None else [],
    }
    if abstain_below is None:
        return RetrieverQueryEngine(**parts)
    return AbstainingQueryEngine(
        abstain_below=abstain_below,
        abstain_message=abstain_message,
        rerank_failed_message=rerank_failed_message,
        **parts,
    )


def _synthesizer(llm: LLM | None, kwargs: dict[str, Any]) -> Any:
    """LlamaIndex's response synthesizer for ``llm``; without one, ``NoText`` (sources only)."""
    from llama_index.core import get_response_synthesizer
    from llama_index.core.response_synthesizers import ResponseMode
    from llama_index.core.response_synthesizers.no_text import NoText

    if llm is not None:
        return get_response_synthesizer(llm=llm, **kwargs)
    kwargs = dict(kwargs)
    mode = ResponseMode(kwargs.pop("response_mode", ResponseMode.NO_TEXT))
    if mode != ResponseMode.NO_TEXT:
        raise ValueError(
            f"response_mode={mode.value!r} writes an answer and needs an LLM: pass llm=... "
            "(or leave response_mode unset for sources only)."
        )
    from llama_index.core.llms import MockLLM

    # NoText never calls its LLM; an explicit placeholder keeps LlamaIndex from resolving its
    # default (OpenAI) LLM.
    return NoText(llm=MockLLM(), **kwargs)


def relevant_enough(nodes: Sequence[NodeWithScore], threshold: float) -> bool:
    """Whether any reranked node's own rerank score reaches ``threshold``.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> relevant_enough([NodeWithScore(node=TextNode(metadata={"rerank_score": 0.7}))], 0.5)
        True
    """
    for n in nodes:
        meta = n.node.metadata
        score = meta.get(RERANK_MODEL_SCORE, meta.get(RERANK_SCORE))
        if isinstance(score, (int, float)) and score >= threshold:
            return True
    return False


def rerank_failed(nodes: Sequence[NodeWithScore]) -> bool:
    """Whether our reranker ran on ``nodes`` but could judge none of them (an outage, such as an
    unreachable LLM endpoint): every node carries ``rerank_score`` and every one is ``None``.

    No nodes (an empty index), nodes without ``rerank_score`` (no reranker, or one that is
    not ours) and nodes with no text to judge (left unjudged on purpose) are not a failure.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> rerank_failed([NodeWithScore(node=TextNode(metadata={"rerank_score": None}))])
        True
        >>> rerank_failed([]), rerank_failed([NodeWithScore(node=TextNode())])
        (False, False)
    """
    # Nodes with no text were left unjudged on purpose: they are no evidence of an outage.
    nodes = [n for n in nodes if n.node.metadata.get(RERANK_ERROR) != NO_TEXT]
    return bool(nodes) and all(
        RERANK_SCORE in n.node.metadata and n.node.metadata[RERANK_SCORE] is None for n in nodes
    )


class AbstainingQueryEngine(RetrieverQueryEngine):
    """A ``RetrieverQueryEngine`` that answers "no relevant context" instead of calling the
    synthesizer when no reranked source reaches the threshold.

    When the reranker could judge no source at all (:func:`rerank_failed`), it answers
    ``rerank_failed_message`` instead, with ``metadata == {"abstained": False,
    "rerank_failed": True}``: an outage must not read as "the documents hold nothing relevant".
    The synthesizer is not called either way, and the sources are returned.

    Built by :func:`build_query_engine` when ``abstain_below`` is set; takes the keyword
    arguments of ``RetrieverQueryEngine`` besides its own.

    Example:
        >>> engine = build_query_engine(index, reranker=r, abstain_below=0.5)  # doctest: +SKIP
        >>> engine.query("timing belt of a diesel van").metadata  # doctest: +SKIP
        {'abstained': True}
    """

    def __init__(
        self,
        *,
        abstain_below: float,
        abstain_message: str = NO_RELEVANT_CONTEXT,
        rerank_failed_message: str = RERANK_FAILED_MESSAGE,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._abstain_below = abstain_below
        self._abstain_message = abstain_message
        self._rerank_failed_message = rerank_failed_message

    def _abstain(self, nodes: list[NodeWithScore]) -> Response | None:
        if rerank_failed(nodes):
            return Response(
                response=self._rerank_failed_message,
                source_nodes=nodes,
                metadata={"abstained": False, "rerank_failed": True},
            )
        if relevant_enough(nodes, self._abstain_below):
            return None
        return Response(
            response=self._abstain_message, source_nodes=nodes, metadata={"abstained": True}
        )

    # Same flow as RetrieverQueryEngine._query/_aquery, with the abstain check between
    # retrieval (which runs the reranker) and the synthesizer.
    def _query(self, query_bundle: QueryBundle) -> Any:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            nodes = self.retrieve(query_bundle)
            response = self._abstain(nodes) or self._response_synthesizer.synthesize(
                query=query_bundle, nodes=nodes
            )
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> Any:
        with self.callback_manager.event(
            CBEventType.QUERY, payload={EventPayload.QUERY_STR: query_bundle.query_str}
        ) as query_event:
            nodes = await self.aretrieve(query_bundle)
            response = self._abstain(nodes) or await self._response_synthesizer.asynthesize(
                query=query_bundle, nodes=nodes
            )
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response
