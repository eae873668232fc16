"""Where the index lives: Chroma configuration, collections and the LlamaIndex vector store.

This is the only module of the package that imports ``chromadb`` (and
``llama_index.vector_stores.chroma``, which imports it); both are imported inside functions so
that ``import llamaindex_rerankers`` stays light.

Collections are opened with no Chroma embedding function: LlamaIndex computes every vector, and
Chroma's default function would download a model.

Example:
    >>> ChromaConfig(persist_dir="./chroma").describe()
    'chroma:./chroma#llamaindex_rerankers'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaindex_rerankers._imports import require
from llamaindex_rerankers.pipeline.embeddings import _embed_model_name

if TYPE_CHECKING:
    from llama_index.core.base.embeddings.base import BaseEmbedding

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "llamaindex_rerankers"
#: Collection metadata key recording the embedding model the collection was created with.
COLLECTION_EMBED_MODEL = "embed_model"

_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


@dataclass(frozen=True)
class ChromaConfig:
    """Where the index lives: an embedded Chroma folder (the default) or a Chroma server.

    Attributes:
        persist_dir: folder of an embedded ``chromadb.PersistentClient``; used when ``host`` is
            not set.
        collection: Chroma collection name.
        host: a Chroma server's host; when set, ``chromadb.HttpClient(host, port)`` is used and
            ``persist_dir`` is ignored.
        port: the Chroma server's port.

    Example:
        >>> ChromaConfig(persist_dir="./chroma").collection
        'llamaindex_rerankers'
        >>> ChromaConfig(host="127.0.0.1", port=8000).port
        8000
    """

    persist_dir: str | Path | None = None
    collection: str = DEFAULT_COLLECTION
    host: str | None = None
    port: int = 8000

    def __post_init__(self) -> None:
        if not isinstance(self.collection, str) or not _COLLECTION_NAME.match(self.collection):
            raise ValueError(
                f"ChromaConfig.collection {self.collection!r} is not a valid Chroma collection "
                "name: use 3-512 characters from [a-zA-Z0-9._-], starting and ending with a "
                "letter or digit (e.g. 'my_docs')."
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"ChromaConfig.port must be an int, got {self.port!r}.")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"ChromaConfig.port must be in 1..65535, got {self.port}.")

    def describe(self) -> str:
        """A short human-readable location, e.g. ``'chroma:/tmp/db#docs'``."""
        where = f"http://{self.host}:{self.port}" if self.host else str(self.persist_dir)
        return f"chroma:{where}#{self.collection}"


def _open_collection(
    config: ChromaConfig, *, create: bool = True, embed_model_name: str | None = None
) -> Any:
    """Get (or create) the configured collection, with no Chroma embedding function."""
    chromadb = require("chromadb")
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if config.host:
        if config.persist_dir is not None:
            logger.debug("ChromaConfig.host is set; persist_dir=%s is ignored", config.persist_dir)
        try:
            client = chromadb.HttpClient(host=config.host, port=config.port, settings=settings)
        except Exception as exc:  # connection errors come as ValueError, httpx errors, ...
            raise ConnectionError(
                f"Could not connect to a Chroma server at {config.host}:{config.port} "
                f"({type(exc).__name__}: {exc}). Start one with `chroma run --path <dir> --host "
                f"{config.host} --port {config.port}`, or unset ChromaConfig.host to use an "
                "embedded Chroma in persist_dir."
            ) from exc
    elif config.persist_dir is not None:
        path = Path(config.persist_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"ChromaConfig.persist_dir {str(path)!r} is a file, not a folder.")
        if not create and not path.exists():
            raise ValueError(_no_index(config))
        client = chromadb.PersistentClient(path=str(path), settings=settings)
    else:
        raise ValueError(
            "ChromaConfig needs a place for the index: pass persist_dir='<folder>' for an "
            "embedded Chroma, or host='<host>' (and port=...) for a Chroma server."
        )
    if not create:
        if config.collection not in {_name(c) for c in client.list_collections()}:
            raise ValueError(_no_index(config))
        return client.get_collection(name=config.collection, embedding_function=None)
    metadata = {COLLECTION_EMBED_MODEL: embed_model_name} if embed_model_name else None
    # embedding_function=None: never Chroma's default embedding function (it downloads a
    # model); LlamaIndex computes every vector. Cosine space suits normalised sentence vectors.
    return client.get_or_create_collection(
        name=config.collection,
        embedding_function=None,
        configuration={"hnsw": {"space": "cosine"}},
        metadata=metadata,
    )


def _name(collection: Any) -> str:
    # list_collections() returns names in some chromadb versions and Collection objects in others.
    return collection if isinstance(collection, str) else str(collection.name)


def _no_index(config: ChromaConfig) -> str:
    return (
        f"There is no index at {config.describe()}. Build it first with index_folder(...) "
        "(or `llamaindex-rerankers index PATH ...`), or check persist_dir / host / collection."
    )


def _vector_store(collection: Any) -> Any:
    chroma_store = require("llama_index.vector_stores.chroma")
    return chroma_store.ChromaVectorStore(chroma_collection=collection)


def _check_collection_model(collection: Any, embed_model: BaseEmbedding) -> None:
    recorded = (collection.metadata or {}).get(COLLECTION_EMBED_MODEL)
    current = _embed_model_name(embed_model)
    if recorded and recorded != current:
        logger.warning(
            "Collection %r was created with embedding model %r but %r is used now; if they are "
            "different models, retrieval will be poor (re-index into a new collection).",
            collection.name,
            recorded,
            current,
        )
