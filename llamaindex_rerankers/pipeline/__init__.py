"""Retrieval pipeline around the rerankers: a Chroma index, first-stage retrieval, reranking.

One job per module, every public name re-exported here:

* :mod:`.embeddings`: the embedding model (``make_embed_model``, ``default_embed_model``).
* :mod:`.chroma`: where the index lives (``ChromaConfig``); the only importer of ``chromadb``.
* :mod:`.indexing`: incremental ``index_folder`` / ``index_documents`` (``IndexStats``).
* :mod:`.query`: ``load_index``, ``retrieve_and_rerank``, ``build_query_engine`` and the
  abstaining engine.

Indexing is idempotent and incremental, with its state in the Chroma collection itself (see
:mod:`.indexing`). Embeddings always come from a LlamaIndex embedding model (by default
``HuggingFaceEmbedding``), never from Chroma's own default embedding function, which would
download a model. ``chromadb`` is imported only when an index is first opened, so that
``import llamaindex_rerankers`` stays light.

Example:
    >>> from llamaindex_rerankers import CrossEncoderReranker
    >>> from llamaindex_rerankers.pipeline import ChromaConfig, index_folder, load_index
    >>> config = ChromaConfig(persist_dir="./chroma")
    >>> stats = index_folder("docs/", config)  # doctest: +SKIP
    >>> index = load_index(config)  # doctest: +SKIP
    >>> engine = build_query_engine(index, reranker=CrossEncoderReranker(top_n=5))  # doctest: +SKIP
    >>> engine.query("best practices for pruning apple trees").source_nodes  # doctest: +SKIP
"""

from __future__ import annotations

from llamaindex_rerankers.pipeline.chroma import (
    COLLECTION_EMBED_MODEL,
    DEFAULT_COLLECTION,
    ChromaConfig,
)
from llamaindex_rerankers.pipeline.embeddings import (
    DEFAULT_EMBED_MODEL,
    EMBED_MODEL_ENV,
    EmbedModelLoadError,
    default_embed_model,
    make_embed_model,
)
from llamaindex_rerankers.pipeline.indexing import (
    SOURCE_HASH,
    SOURCE_ID,
    IndexStats,
    index_documents,
    index_folder,
)
from llamaindex_rerankers.pipeline.query import (
    NO_RELEVANT_CONTEXT,
    RERANK_FAILED_MESSAGE,
    AbstainingQueryEngine,
    RetrievalResult,
    build_query_engine,
    load_index,
    relevant_enough,
    rerank_failed,
    retrieve_and_rerank,
)

__all__ = [
    "COLLECTION_EMBED_MODEL",
    "DEFAULT_COLLECTION",
    "DEFAULT_EMBED_MODEL",
    "EMBED_MODEL_ENV",
    "NO_RELEVANT_CONTEXT",
    "RERANK_FAILED_MESSAGE",
    "SOURCE_HASH",
    "SOURCE_ID",
    "AbstainingQueryEngine",
    "ChromaConfig",
    "EmbedModelLoadError",
    "IndexStats",
    "RetrievalResult",
    "build_query_engine",
    "default_embed_model",
    "index_documents",
    "index_folder",
    "load_index",
    "make_embed_model",
    "relevant_enough",
    "rerank_failed",
    "retrieve_and_rerank",
]
