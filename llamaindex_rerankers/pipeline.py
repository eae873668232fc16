"""Retrieval pipeline around the rerankers: a Chroma index, first-stage retrieval, reranking.

This is the only module of the package that imports ``chromadb`` (and
``llama_index.vector_stores.chroma``, which imports it); both are imported inside functions so
that ``import llamaindex_rerankers`` stays light.

Indexing is idempotent and incremental, with its state kept in the Chroma collection itself so
that it works the same for an embedded ``PersistentClient`` and a ``chroma run`` server: every
chunk carries ``source_id`` (the file's path relative to the indexed folder, or the document id)
and ``source_hash`` (a fingerprint of the source's content and of the indexing settings) in its
metadata, and chunk ids are stable (``"<source_id>#<chunk number>"``). Re-indexing compares
fingerprints, embeds only new and changed sources and removes the chunks of changed and deleted
ones. Chunks without ``source_id`` (written by other tools) are never touched.

Embeddings always come from a LlamaIndex embedding model (by default ``HuggingFaceEmbedding``),
never from Chroma's own default embedding function, which would download a model.

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

import hashlib
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from llamaindex_rerankers._imports import require
from llamaindex_rerankers._models import ModelLoadError, model_location

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import LLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import BaseNode, Document, NodeWithScore

logger = logging.getLogger(__name__)

DEFAULT_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Environment variable naming a model id or local path that replaces the default embedding model.
EMBED_MODEL_ENV = "LLAMAINDEX_RERANKERS_EMBED_MODEL"
#: What :func:`build_query_engine` answers when it abstains.
NO_RELEVANT_CONTEXT = "No relevant context found."
DEFAULT_COLLECTION = "llamaindex_rerankers"

#: Chunk metadata keys that hold the incremental-indexing state.
SOURCE_ID = "source_id"
SOURCE_HASH = "source_hash"
#: Collection metadata key recording the embedding model the collection was created with.
COLLECTION_EMBED_MODEL = "embed_model"

# Chunks are embedded and written in groups of about this many, so an interrupted run keeps the
# sources already written (they count as unchanged next time).
_FLUSH_CHUNKS = 256
# Page size for reading and deleting ids; below every Chroma client's max batch size.
_PAGE = 1000
_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class EmbedModelLoadError(ModelLoadError):
    """The embedding model could not be loaded; the message says how to select another one."""


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


@dataclass(frozen=True)
class IndexStats:
    """What one indexing run did. File/document counts, except ``chunks`` and ``embedded``.

    Attributes:
        added: sources (files or documents) seen for the first time.
        updated: sources whose content (or the indexing settings) changed; re-embedded.
        removed: sources no longer present; their chunks were deleted.
        unchanged: sources left as they were (nothing embedded).
        chunks: chunks in the collection after the run (all of them).
        embedded: chunks embedded in this run.
        skipped: new or changed sources that produced no text (nothing stored for them).

    Example:
        >>> IndexStats(added=2, updated=0, removed=0, unchanged=5, chunks=9).changed
        True
    """

    added: int
    updated: int
    removed: int
    unchanged: int
    chunks: int
    embedded: int = 0
    skipped: int = 0

    @property
    def changed(self) -> bool:
        """Whether the run changed the collection."""
        return bool(self.added or self.updated or self.removed)


@dataclass(frozen=True)
class RetrievalResult:
    """First-stage results and their reranked order for one query.

    Attributes:
        query: the query string.
        retrieved: nodes in first-stage (vector similarity) order.
        reranked: nodes after the reranker (a copy of ``retrieved`` when there is no reranker).

    Example:
        >>> RetrievalResult(query="q", retrieved=[], reranked=[]).reranked
        []
    """

    query: str
    retrieved: list[NodeWithScore]
    reranked: list[NodeWithScore]


# -- embedding model ------------------------------------------------------------------------


def default_embed_model() -> str:
    """The embedding model used when none is passed: ``$LLAMAINDEX_RERANKERS_EMBED_MODEL`` or
    the hub default.

    Example:
        >>> default_embed_model()  # doctest: +SKIP
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    return os.environ.get(EMBED_MODEL_ENV) or DEFAULT_EMBED_MODEL


_EMBED_MODELS: dict[tuple[str, str | None], BaseEmbedding] = {}
_EMBED_LOCK = threading.Lock()


def make_embed_model(model: str | None = None, *, device: str | None = None) -> BaseEmbedding:
    """A LlamaIndex ``HuggingFaceEmbedding``, loaded once per process per (model, device).

    Args:
        model: hub id or local path of a sentence-transformers model. ``None`` uses
            ``$LLAMAINDEX_RERANKERS_EMBED_MODEL`` if set, else
            ``sentence-transformers/all-MiniLM-L6-v2``.
        device: torch device ('cpu', 'cuda', ...); ``None`` picks automatically.

    Returns:
        The embedding model (shared by every caller asking for the same model and device).

    Raises:
        EmbedModelLoadError: the model cannot be loaded (offline, wrong path); the message names
            the ``model`` argument and the environment variable.

    Example:
        >>> embed = make_embed_model("/models/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> len(embed.get_text_embedding("pruning apple trees"))  # doctest: +SKIP
        384
    """
    name = model or default_embed_model()
    key = (name, device)
    with _EMBED_LOCK:
        if key not in _EMBED_MODELS:
            _EMBED_MODELS[key] = _load_embed_model(name, device)
        return _EMBED_MODELS[key]


def _load_embed_model(name: str, device: str | None) -> BaseEmbedding:
    how_to_fix = (
        f"Pass model='<hub id or local path>' to make_embed_model (or embed_model=... to the "
        f"index functions), or set {EMBED_MODEL_ENV}=<local path> to replace the default "
        f"({DEFAULT_EMBED_MODEL})."
    )
    location = model_location(name, "Embedding model", how_to_fix, EmbedModelLoadError)
    try:
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    except ImportError as exc:
        raise ImportError(
            f"HuggingFaceEmbedding could not be imported ({exc}). Install it with: "
            "pip install llama-index-embeddings-huggingface"
        ) from exc
    try:
        embed: BaseEmbedding = HuggingFaceEmbedding(model_name=location, device=device)
    except Exception as exc:  # hub/network/format errors come in many types
        raise EmbedModelLoadError(
            f"Could not load embedding model {name!r} ({type(exc).__name__}: {exc}). {how_to_fix}"
        ) from exc
    return embed


# -- Chroma ---------------------------------------------------------------------------------


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
    try:
        from llama_index.vector_stores.chroma import ChromaVectorStore
    except ImportError as exc:
        raise ImportError(
            f"ChromaVectorStore could not be imported ({exc}). Install it with: "
            "pip install llama-index-vector-stores-chroma"
        ) from exc
    return ChromaVectorStore(chroma_collection=collection)


def _embed_model_name(embed_model: BaseEmbedding) -> str:
    return str(getattr(embed_model, "model_name", None) or type(embed_model).__name__)


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


# -- incremental indexing ---------------------------------------------------------------------


@dataclass
class _Source:
    """One unit of incremental indexing: a file or a document id."""

    key: str
    fingerprint: str
    load: Callable[[], list[Document]]


@dataclass
class _Stored:
    ids: list[str] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)


def index_folder(
    path: str | Path,
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding | None = None,
    chunk_size: int = 512,
    chunk_overlap: int = 64,
    show_progress: bool = True,
    required_exts: Sequence[str] | None = None,
    delete_missing: bool = True,
) -> IndexStats:
    """Index (or re-index) a folder into Chroma, embedding only new and changed files.

    Files are read recursively with LlamaIndex's ``SimpleDirectoryReader`` (hidden files
    skipped; ``.md``, ``.txt`` and whatever else it reads). A file is identified by its path
    relative to ``path`` and fingerprinted by its bytes and the indexing settings, so running
    this again on an unchanged folder embeds nothing, an edited file is re-embedded, and a
    deleted file's chunks are removed. The collection mirrors the folder: index one folder per
    collection (or pass ``delete_missing=False``).

    Args:
        path: the folder to index.
        config: where the index lives.
        embed_model: the embedding model; ``None`` uses :func:`make_embed_model`.
        chunk_size: chunk size in tokens (LlamaIndex ``SentenceSplitter``).
        chunk_overlap: overlap between chunks in tokens.
        show_progress: show a tqdm progress bar while embedding.
        required_exts: only index files with these extensions (e.g. ``[".md", ".txt"]``).
        delete_missing: remove the chunks of files that are no longer in the folder.

    Returns:
        What the run did.

    Raises:
        ValueError: ``path`` is not a folder or holds no readable file.

    Example:
        >>> stats = index_folder("docs/", ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
        >>> stats.added, stats.chunks  # doctest: +SKIP
        (12, 40)
    """
    from llama_index.core import SimpleDirectoryReader

    _check_chunking(chunk_size, chunk_overlap)
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"index_folder needs a folder; {str(root)!r} is not one.")
    exts = [e if e.startswith(".") else f".{e}" for e in required_exts or []] or None
    try:
        files = [
            Path(f)
            for f in SimpleDirectoryReader(
                str(root), recursive=True, required_exts=exts
            ).input_files
        ]
    except ValueError as exc:  # "No files found in ..."
        files = []
        logger.debug("SimpleDirectoryReader: %s", exc)
    if config.persist_dir is not None and not config.host:
        # An embedded Chroma kept inside the folder must not index its own database files.
        db = Path(config.persist_dir).expanduser().resolve()
        files = [f for f in files if not f.resolve().is_relative_to(db)]
    if not files:
        raise ValueError(
            f"No files to index in {str(root)!r}; put .md/.txt files there or check "
            f"required_exts={list(required_exts or [])}."
        )

    def loader(file: Path, rel: str) -> Callable[[], list[Document]]:
        def load() -> list[Document]:
            reader = SimpleDirectoryReader(
                input_files=[str(file)], file_metadata=lambda p: _file_metadata(Path(p), rel)
            )
            return list(reader.load_data(show_progress=False))

        return load

    embed = embed_model if embed_model is not None else make_embed_model()
    settings = _settings_tag(chunk_size, chunk_overlap, embed)
    sources = []
    for file in files:
        rel = file.relative_to(root).as_posix()
        digest = _sha256(file.read_bytes())
        sources.append(_Source(rel, _sha256(f"{digest}|{settings}".encode()), loader(file, rel)))
    return _sync(
        sources,
        config,
        embed_model=embed,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        show_progress=show_progress,
        delete_missing=delete_missing,
    )


def index_documents(
    documents: Sequence[Document],
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding | None = None,
    chunk_size: int = 512,
    chunk_overlap: int = 64,
    show_progress: bool = True,
    delete_missing: bool = True,
) -> IndexStats:
    """Index LlamaIndex documents into Chroma, incrementally, keyed by document id.

    Same logic as :func:`index_folder`: a document is fingerprinted by its text, metadata and the
    indexing settings; unchanged documents are not re-embedded; documents with the same id are
    indexed together as one source. Give documents stable ids (``Document(id_="...")``): random
    ids make every run re-embed everything.

    Args:
        documents: the documents; they are not modified.
        config: where the index lives.
        embed_model: the embedding model; ``None`` uses :func:`make_embed_model`.
        chunk_size: chunk size in tokens (LlamaIndex ``SentenceSplitter``).
        chunk_overlap: overlap between chunks in tokens.
        show_progress: show a tqdm progress bar while embedding.
        delete_missing: remove the chunks of document ids not in ``documents``.

    Returns:
        What the run did.

    Example:
        >>> from llama_index.core import Document
        >>> docs = [Document(id_="guide", text="Prune apple trees in late winter.")]
        >>> index_documents(docs, ChromaConfig(persist_dir="./chroma"))  # doctest: +SKIP
        IndexStats(added=1, updated=0, removed=0, unchanged=0, chunks=1, embedded=1, skipped=0)
    """
    from llama_index.core.schema import Document as LIDocument

    _check_chunking(chunk_size, chunk_overlap)
    groups: dict[str, list[Document]] = {}
    for i, doc in enumerate(documents):
        if not isinstance(doc, LIDocument):
            raise TypeError(
                f"documents[{i}] is a {type(doc).__name__}, not a llama_index Document; wrap "
                "text as Document(id_='...', text='...')."
            )
        groups.setdefault(doc.doc_id, []).append(doc)
    random_ids = sum(bool(_UUID.match(k)) for k in groups)
    if random_ids:
        logger.warning(
            "%d of %d documents have random (uuid) ids; re-indexing them re-embeds them every "
            "time. Pass Document(id_='<stable id>', ...) for incremental indexing.",
            random_ids,
            len(groups),
        )
    embed = embed_model if embed_model is not None else make_embed_model()
    settings = _settings_tag(chunk_size, chunk_overlap, embed)
    sources = []
    for key, docs in groups.items():
        content = json.dumps(
            [[d.text, d.metadata] for d in docs], sort_keys=True, default=str, ensure_ascii=False
        )
        fingerprint = _sha256(f"{_sha256(content.encode())}|{settings}".encode())
        sources.append(_Source(key, fingerprint, _copier(docs)))
    return _sync(
        sources,
        config,
        embed_model=embed,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        show_progress=show_progress,
        delete_missing=delete_missing,
    )


def _copier(docs: Sequence[Document]) -> Callable[[], list[Document]]:
    """A loader that returns copies, so the caller's documents are never modified."""
    return lambda: [d.model_copy() for d in docs]


def _sync(
    sources: Sequence[_Source],
    config: ChromaConfig,
    *,
    embed_model: BaseEmbedding,
    chunk_size: int,
    chunk_overlap: int,
    show_progress: bool,
    delete_missing: bool,
) -> IndexStats:
    """Bring the collection in line with ``sources``; embeds only new and changed ones."""
    _check_chunking(chunk_size, chunk_overlap)
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError("Source ids must be unique; this is a bug in the caller.")
    embed = embed_model
    collection = _open_collection(config, create=True, embed_model_name=_embed_model_name(embed))
    _check_collection_model(collection, embed)
    stored = _stored_state(collection)

    todo = [s for s in sources if stored.get(s.key, _Stored()).hashes != {s.fingerprint}]
    added = sum(s.key not in stored for s in todo)
    updated = len(todo) - added
    unchanged = len(sources) - len(todo)
    present = set(keys)
    gone = [k for k in stored if k not in present] if delete_missing else []
    logger.info(
        "Indexing into %s: %d new, %d changed, %d unchanged, %d removed sources",
        config.describe(),
        added,
        updated,
        unchanged,
        len(gone),
    )

    for key in gone:
        _delete_ids(collection, stored[key].ids)

    # Read and chunk first (cheap) so the progress bar knows the number of chunks to embed.
    chunked: list[tuple[_Source, list[BaseNode]]] = []
    skipped = 0
    for source in todo:
        nodes = _chunk(source, chunk_size, chunk_overlap)
        if not nodes:
            logger.warning("%s produced no text to index; skipped", source.key)
            skipped += 1
        chunked.append((source, nodes))
    if skipped:
        # A source with no chunks stores nothing, so it shows up as new on every run.
        added -= sum(1 for s, n in chunked if not n and s.key not in stored)
        updated -= sum(1 for s, n in chunked if not n and s.key in stored)

    total = sum(len(n) for _, n in chunked)
    _warn_truncation(embed, [n for _, ns in chunked for n in ns])
    store = _vector_store(collection) if total else None
    embedded = 0
    with tqdm(
        total=total, desc="Embedding chunks", unit="chunk", disable=not show_progress or not total
    ) as bar:
        for group in _groups(chunked, _FLUSH_CHUNKS):
            nodes = [n for _, ns in group for n in ns]
            vectors = _embed(embed, nodes, bar)
            for node, vector in zip(nodes, vectors, strict=True):
                node.embedding = vector
            # Embed first, then swap: a failed embedding leaves the old chunks in place.
            for source, _ in group:
                if source.key in stored:
                    _delete_ids(collection, stored[source.key].ids)
            if nodes and store is not None:
                for start in range(0, len(nodes), _PAGE):
                    store.add(nodes[start : start + _PAGE])
            embedded += len(nodes)
    return IndexStats(
        added=added,
        updated=updated,
        removed=len(gone),
        unchanged=unchanged,
        chunks=int(collection.count()),
        embedded=embedded,
        skipped=skipped,
    )


def _check_chunking(chunk_size: int, chunk_overlap: int) -> None:
    if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(
            f"Need chunk_size >= 1 and 0 <= chunk_overlap < chunk_size; got "
            f"chunk_size={chunk_size}, chunk_overlap={chunk_overlap}."
        )


def _stored_state(collection: Any) -> dict[str, _Stored]:
    """source_id -> chunk ids and fingerprints, read from the chunks' metadata."""
    state: dict[str, _Stored] = {}
    offset = 0
    while True:
        got = collection.get(include=["metadatas"], limit=_PAGE, offset=offset)
        ids = list(got["ids"])
        for chunk_id, meta in zip(ids, got["metadatas"] or [], strict=False):
            key = (meta or {}).get(SOURCE_ID)
            if not isinstance(key, str):
                continue  # not written by this module: leave it alone
            entry = state.setdefault(key, _Stored())
            entry.ids.append(chunk_id)
            entry.hashes.add(str((meta or {}).get(SOURCE_HASH)))
        if len(ids) < _PAGE:
            return state
        offset += _PAGE


def _delete_ids(collection: Any, ids: Sequence[str]) -> None:
    for start in range(0, len(ids), _PAGE):
        collection.delete(ids=list(ids[start : start + _PAGE]))


def _chunk(source: _Source, chunk_size: int, chunk_overlap: int) -> list[BaseNode]:
    """Split a source into nodes with stable ids ``<source_id>#<n>`` and the state metadata."""
    from llama_index.core.node_parser import SentenceSplitter

    docs = []
    for doc in source.load():
        extra = {SOURCE_ID: source.key, SOURCE_HASH: source.fingerprint}
        docs.append(
            doc.model_copy(
                update={
                    # One ref_doc_id per source, so index.delete_ref_doc(source_id) works too.
                    "id_": source.key,
                    "metadata": {**doc.metadata, **extra},
                    "excluded_embed_metadata_keys": _union(doc.excluded_embed_metadata_keys, extra),
                    "excluded_llm_metadata_keys": _union(doc.excluded_llm_metadata_keys, extra),
                }
            )
        )
    counter = itertools.count()
    splitter = SentenceSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        # Called once per chunk, in order, before prev/next links are set: ids stay consistent.
        id_func=lambda _i, _doc: f"{source.key}#{next(counter)}",
    )
    return [n for n in splitter.get_nodes_from_documents(docs) if n.get_content().strip()]


def _groups(
    chunked: Sequence[tuple[_Source, list[BaseNode]]], size: int
) -> Iterator[list[tuple[_Source, list[BaseNode]]]]:
    group: list[tuple[_Source, list[BaseNode]]] = []
    count = 0
    for item in chunked:
        group.append(item)
        count += len(item[1])
        if count >= size:
            yield group
            group, count = [], 0
    if group:
        yield group


def _embed(embed: BaseEmbedding, nodes: Sequence[BaseNode], bar: Any) -> list[list[float]]:
    from llama_index.core.schema import MetadataMode

    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    vectors: list[list[float]] = []
    step = max(1, int(getattr(embed, "embed_batch_size", 32) or 32))
    for start in range(0, len(texts), step):
        batch = texts[start : start + step]
        vectors.extend(embed.get_text_embedding_batch(batch))
        bar.update(len(batch))
    return vectors


def _warn_truncation(embed: BaseEmbedding, nodes: Sequence[BaseNode]) -> None:
    """Log when chunks are longer than the embedding model reads (they get truncated)."""
    if not nodes:
        return
    model = getattr(embed, "_model", None)  # HuggingFaceEmbedding's SentenceTransformer
    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None:
        return
    from llama_index.core.schema import MetadataMode

    try:
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        lengths = [len(x) for x in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    except Exception:  # a tokenizer we do not know how to call: no warning, no failure
        logger.debug("could not count embedding tokens", exc_info=True)
        return
    long = sum(n > limit for n in lengths)
    if long:
        logger.warning(
            "%d of %d chunks are longer than the embedding model's %d tokens and are truncated "
            "when embedded; pass a smaller chunk_size.",
            long,
            len(nodes),
            limit,
        )


def _file_metadata(file: Path, rel: str) -> dict[str, Any]:
    from llama_index.core.readers.file.base import default_file_metadata_func

    meta = default_file_metadata_func(str(file))
    # The relative path keeps the index independent of where the folder lives; the access date
    # would change on every read.
    meta["file_path"] = rel
    meta.pop("last_accessed_date", None)
    return meta


def _settings_tag(chunk_size: int, chunk_overlap: int, embed_model: BaseEmbedding) -> str:
    name = _embed_model_name(embed_model)
    return f"chunk_size={chunk_size}|chunk_overlap={chunk_overlap}|embed={name}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _union(existing: Sequence[str], new: Sequence[str] | dict[str, Any]) -> list[str]:
    return list(existing) + [k for k in new if k not in existing]


# -- loading, retrieval, query engines --------------------------------------------------------


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
    if reranker is None:
        reranked = list(retrieved)
    else:
        reranked = reranker.postprocess_nodes(list(retrieved), query_str=query)
    return RetrievalResult(query=query, retrieved=list(retrieved), reranked=list(reranked))


def build_query_engine(
    index: VectorStoreIndex,
    *,
    reranker: BaseNodePostprocessor | None = None,
    top_k: int = 20,
    llm: LLM | None = None,
    abstain_below: float | None = None,
    abstain_message: str = NO_RELEVANT_CONTEXT,
    **kwargs: Any,
) -> RetrieverQueryEngine:
    """Query engine: retriever top ``top_k`` -> reranker (its own ``top_n``) -> synthesizer.

    With ``abstain_below`` set, a query whose reranked sources all score below it (by the
    reranker's own score, ``rerank_model_score`` when fused, else ``rerank_score``) is answered
    with ``abstain_message`` instead of sending junk to the synthesizer: the LLM is not called,
    ``response.metadata["abstained"]`` is True and the sources are still returned. For the LLM
    reranker, pass the value of the weakest label that counts (``likely`` = 0.5 by default).

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
    from llama_index.core import get_response_synthesizer
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers import ResponseMode
    from llama_index.core.response_synthesizers.no_text import NoText

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    if abstain_below is not None and not 0.0 <= abstain_below <= 1.0:
        raise ValueError(f"abstain_below must be in [0, 1] (a rerank score), got {abstain_below}.")
    if llm is None:
        mode = ResponseMode(kwargs.pop("response_mode", ResponseMode.NO_TEXT))
        if mode != ResponseMode.NO_TEXT:
            raise ValueError(
                f"response_mode={mode.value!r} writes an answer and needs an LLM: pass llm=... "
                "(or leave response_mode unset for sources only)."
            )
        from llama_index.core.llms import MockLLM

        # NoText never calls its LLM; an explicit placeholder keeps LlamaIndex from resolving
        # its default (OpenAI) LLM.
        synthesizer: Any = NoText(llm=MockLLM(), **kwargs)
    else:
        synthesizer = get_response_synthesizer(llm=llm, **kwargs)
    parts: dict[str, Any] = {
        "retriever": index.as_retriever(similarity_top_k=top_k),
        "response_synthesizer": synthesizer,
        "node_postprocessors": [reranker] if reranker is not None else [],
    }
    if abstain_below is None:
        return RetrieverQueryEngine(**parts)
    return _abstaining_engine_class()(
        abstain_below=abstain_below, abstain_message=abstain_message, **parts
    )


def relevant_enough(nodes: Sequence[NodeWithScore], threshold: float) -> bool:
    """Whether any reranked node's own rerank score reaches ``threshold``.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> relevant_enough([NodeWithScore(node=TextNode(metadata={"rerank_score": 0.7}))], 0.5)
        True
    """
    for n in nodes:
        meta = n.node.metadata
        score = meta.get("rerank_model_score", meta.get("rerank_score"))
        if isinstance(score, (int, float)) and score >= threshold:
            return True
    return False


def _abstaining_engine_class() -> Callable[..., RetrieverQueryEngine]:
    from llama_index.core.base.response.schema import Response
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import QueryBundle

    class AbstainingQueryEngine(RetrieverQueryEngine):
        """A ``RetrieverQueryEngine`` that answers "no relevant context" instead of calling the
        synthesizer when no reranked source reaches the threshold."""

        def __init__(self, *, abstain_below: float, abstain_message: str, **kw: Any) -> None:
            super().__init__(**kw)
            self._abstain_below = abstain_below
            self._abstain_message = abstain_message

        def _abstain(self, nodes: list[NodeWithScore]) -> Response | None:
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

    return AbstainingQueryEngine
